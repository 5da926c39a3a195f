// The fused path's one-hidden-layer node (feedalign.rules.fast._OneHiddenFunction), compiled.
//
//   forward:  h = f(x W1^T + b1),  y = h W2^T + b2                          x (N, in), h (N, w), y (N, out)
//   backward: delta = s (e M') * f'(a)   with (M', s) = plan.signals.one_hidden_matrix(plan, inputs),
//             dW2 = e^T h,  db2 = sum_n e,  dW1 = delta^T x,  db1 = sum_n delta     e = dL/dy (N, out)
//
// The same ATen kernels in the same order as the Python node, so the same bits (tests/test_native.py);
// what it saves is the Python autograd Function's own cost, about 25 us of a 0.53 ms step on
// 784-100-10:64. The rule's matrix is still asked for in Python at backward time, as the Python node
// does (brsf counts its draws there; sign(W) is taken from W as it is then).
#include <torch/extension.h>

namespace feedalign {

enum Activation : int64_t { kTanh = 0, kSigmoid = 1, kReLU = 2, kLeakyReLU = 3, kIdentity = 4 };

// The plan, a Python object, kept in the autograd context (which holds only IValues).
struct PythonRef : torch::CustomClassHolder {
  py::object object;
  explicit PythonRef(py::object object) : object(std::move(object)) {}
  ~PythonRef() override {
    if (!Py_IsInitialized()) {  // at interpreter exit: nothing left to release
      object.release();
      return;
    }
    py::gil_scoped_acquire gil;  // the graph may be freed by a thread that does not hold the GIL
    object = py::object();
  }
};

struct OneHiddenNode : public torch::autograd::Function<OneHiddenNode> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& input,
                            const at::Tensor& w1, const std::optional<at::Tensor>& b1, const at::Tensor& w2,
                            const std::optional<at::Tensor>& b2, const std::vector<at::Tensor>& inputs,
                            py::object plan, int64_t activation, double slope) {
    at::Tensor hidden = b1.has_value() ? at::addmm(*b1, input, w1.t()) : input.mm(w1.t());
    switch (activation) {
      case kTanh: hidden.tanh_(); break;
      case kSigmoid: hidden.sigmoid_(); break;
      case kReLU: hidden.relu_(); break;
      case kLeakyReLU: at::leaky_relu_(hidden, slope); break;
      case kIdentity: break;
      default: TORCH_CHECK(false, "unknown activation code ", activation);
    }
    std::vector<at::Tensor> saved{input, hidden};
    saved.insert(saved.end(), inputs.begin(), inputs.end());
    ctx->save_for_backward(saved);
    ctx->saved_data["plan"] = c10::IValue::make_capsule(c10::make_intrusive<PythonRef>(std::move(plan)));
    ctx->saved_data["activation"] = activation;
    ctx->saved_data["slope"] = slope;
    ctx->saved_data["b1"] = b1.has_value();
    ctx->saved_data["b2"] = b2.has_value();
    return at::linear(hidden, w2, b2);  // as F.linear in the Python node
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor& input = saved[0];
    const at::Tensor& hidden = saved[1];
    const at::Tensor error = grads[0].contiguous();
    at::Tensor matrix;
    double scale;
    {
      py::gil_scoped_acquire gil;
      const py::object& plan = static_cast<PythonRef*>(ctx->saved_data["plan"].toCapsule().get())->object;
      py::list inputs;
      for (size_t i = 2; i < saved.size(); ++i) inputs.append(saved[i]);
      const py::tuple pair = plan.attr("signals").attr("one_hidden_matrix")(plan, inputs);
      matrix = pair[0].cast<at::Tensor>();
      scale = pair[1].cast<double>();
    }
    // beta=0: hidden, of delta's shape, is only a placeholder input, never read
    at::Tensor delta = scale == 1.0 ? error.mm(matrix) : at::addmm(hidden, error, matrix, 0, scale);
    switch (ctx->saved_data["activation"].toInt()) {
      case kTanh: at::tanh_backward_out(delta, delta, hidden); break;
      case kSigmoid: at::sigmoid_backward_out(delta, delta, hidden); break;
      case kReLU: at::threshold_backward_out(delta, delta, hidden, 0); break;
      case kLeakyReLU:
        at::leaky_relu_backward_out(delta, delta, hidden, ctx->saved_data["slope"].toDouble(), true);
        break;
      default: break;  // identity: f' = 1
    }
    // Autograd numbers only tensor arguments (absent biases not counted): input 0, W1 1, then b1, W2, b2.
    const bool has_b1 = ctx->saved_data["b1"].toBool(), has_b2 = ctx->saved_data["b2"].toBool();
    size_t edge = 1;
    const bool need_w1 = ctx->needs_input_grad(edge++);
    const bool need_b1 = has_b1 && ctx->needs_input_grad(edge++);
    const bool need_w2 = ctx->needs_input_grad(edge++);
    const bool need_b2 = has_b2 && ctx->needs_input_grad(edge++);
    // one gradient per forward argument: input, W1, b1, W2, b2, inputs, plan, activation, slope
    return {at::Tensor(), need_w1 ? delta.t().mm(input) : at::Tensor(), need_b1 ? delta.sum(0) : at::Tensor(),
            need_w2 ? error.t().mm(hidden) : at::Tensor(), need_b2 ? error.sum(0) : at::Tensor(),
            at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

at::Tensor apply(const at::Tensor& input, const at::Tensor& w1, const std::optional<at::Tensor>& b1,
                 const at::Tensor& w2, const std::optional<at::Tensor>& b2, const std::vector<at::Tensor>& inputs,
                 py::object plan, int64_t activation, double slope) {
  return OneHiddenNode::apply(input, w1, b1, w2, b2, inputs, std::move(plan), activation, slope);
}

}  // namespace feedalign

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "feedalign's fused one-hidden-layer node, compiled (feedalign.rules.native)";
  m.def("apply", &feedalign::apply, "y = f(x W1^T + b1) W2^T + b2 as one autograd node");
  m.attr("NODE_NAME") = c10::demangle(typeid(torch::autograd::CppNode<feedalign::OneHiddenNode>).name());
}
