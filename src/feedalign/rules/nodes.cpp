// The fused path's autograd nodes (feedalign.rules.fast), compiled: the same ATen kernels in the same
// order as their Python twins, so the same bits (tests/test_native.py). What they save is Python's own
// cost per step, a visible share of a small network's step.
//
// OneHiddenNode, the twin of _OneHiddenFunction (about 25 us of a 0.53 ms step on 784-100-10:64):
//   forward:  h = f(x W1^T + b1),  y = h W2^T + b2                          x (N, in), h (N, w), y (N, out)
//   backward: delta = s (e M') * f'(a)   with (M', s) = plan.signals.one_hidden_matrix(plan, inputs)
//             (or (inputs[i], 1) with i = plan.signals.one_hidden_input, read here: DFA's and IFA's B),
//             and e replaced by plan.signals.direct_source(y, e, inputs) for a rule with a source of its own
//             (drtp),
//             dW2 = e^T h,  db2 = sum_n e,  dW1 = delta^T x,  db1 = sum_n delta     e = dL/dy (N, out)
//
// StackNode, the twin of _StackFunction for a stack of any depth L (K = L - 1 hidden layers):
//   forward:  h_l = f_l(h_{l-1} W_l^T + b_l) (h_0 = x),  y = h_K W_L^T + b_L,  every h_l in one (K, N, w)
//             tensor when the hidden widths are equal
//   backward: delta_1 .. delta_K from the rule's StackedSignals: for a chain rule (FA-type), the chain
//             delta_l = s_l (delta_{l+1} M_l) * f'(a_l) here with (M_l, s_l) = plan.signals.chain(plan, inputs);
//             for a direct rule, delta_k = (s B_k) * f'(a_k) here with the B_k of plan.signals.direct(plan, inputs)
//             and s = e (DFA) or plan.signals.direct_source(y, e, inputs) (drtp's target);
//             else plan.backward_signals(...) in Python. Then dW_L = e^T h_K, dW_l = delta_l^T h_{l-1},
//             db_l = sum_n delta_l
//
// Both ask Python for the rule's part at backward time, as their twins do (brsf counts its draws there;
// sign(W) is taken from W as it is then); neither computes an input gradient (they are taken only for
// inputs that need none). The stack node gives the rule's own inputs the gradients its
// StackedSignals.input_grads names (kp's trained B gets its W's dW), asking Python only when one needs it.
#include <torch/extension.h>

namespace feedalign {

enum Activation : int64_t { kTanh = 0, kSigmoid = 1, kReLU = 2, kLeakyReLU = 3, kIdentity = 4 };
// How the stack node gets the deltas (fast.Plan.signals_mode): from Python, or an FA-type chain or a direct
// projection it runs itself
enum SignalsMode : int64_t { kPython = 0, kChain = 1, kDirect = 2 };

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

// The plan that forward kept in ctx (a fast.Plan); use it with the GIL held.
const py::object& plan_of(torch::autograd::AutogradContext* ctx) {
  return static_cast<PythonRef*>(ctx->saved_data["plan"].toCapsule().get())->object;
}

// f in place, as fast._forward_kernel
void activate_(at::Tensor& a, int64_t activation, double slope) {
  switch (activation) {
    case kTanh: a.tanh_(); break;
    case kSigmoid: a.sigmoid_(); break;
    case kReLU: a.relu_(); break;
    case kLeakyReLU: at::leaky_relu_(a, slope); break;
    case kIdentity: break;
    default: TORCH_CHECK(false, "unknown activation code ", activation);
  }
}

// out = grad * f'(a) given h = f(a) (grad may be out), with the kernel autograd runs for the module
// (fast.times_derivative)
void times_derivative(at::Tensor& out, const at::Tensor& grad, const at::Tensor& hidden, int64_t activation,
                      double slope) {
  switch (activation) {
    case kTanh: at::tanh_backward_out(out, grad, hidden); break;
    case kSigmoid: at::sigmoid_backward_out(out, grad, hidden); break;
    case kReLU: at::threshold_backward_out(out, grad, hidden, 0); break;
    case kLeakyReLU: at::leaky_relu_backward_out(out, grad, hidden, slope, true); break;
    default:  // identity: f' = 1
      if (!out.is_same(grad)) out.copy_(grad);
  }
}

struct OneHiddenNode : public torch::autograd::Function<OneHiddenNode> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& input,
                            const at::Tensor& w1, const std::optional<at::Tensor>& b1, const at::Tensor& w2,
                            const std::optional<at::Tensor>& b2, const std::vector<at::Tensor>& inputs,
                            py::object plan, int64_t activation, double slope, int64_t matrix_input,
                            bool ask_source, bool save_output) {
    at::Tensor hidden = b1.has_value() ? at::addmm(*b1, input, w1.t()) : input.mm(w1.t());
    activate_(hidden, activation, slope);
    at::Tensor output = at::linear(hidden, w2, b2);  // as F.linear in the Python node
    std::vector<at::Tensor> saved{input, hidden};
    if (save_output) saved.push_back(output);
    saved.insert(saved.end(), inputs.begin(), inputs.end());
    ctx->save_for_backward(saved);
    ctx->saved_data["plan"] = c10::IValue::make_capsule(c10::make_intrusive<PythonRef>(std::move(plan)));
    ctx->saved_data["activation"] = activation;
    ctx->saved_data["slope"] = slope;
    ctx->saved_data["b1"] = b1.has_value();
    ctx->saved_data["b2"] = b2.has_value();
    ctx->saved_data["matrix_input"] = matrix_input;
    ctx->saved_data["ask_source"] = ask_source;
    ctx->saved_data["save_output"] = save_output;
    return output;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor& input = saved[0];
    const at::Tensor& hidden = saved[1];
    const bool save_output = ctx->saved_data["save_output"].toBool();
    const at::Tensor output = save_output ? saved[2] : at::Tensor();
    const size_t first_input = save_output ? 3 : 2;
    const at::Tensor error = grads[0].contiguous();
    at::Tensor signal = error;  // what M carries: e, or the rule's own source
    at::Tensor matrix;
    double scale = 1.0;
    const int64_t matrix_input = ctx->saved_data["matrix_input"].toInt();
    const bool ask_source = ctx->saved_data["ask_source"].toBool();
    if (matrix_input >= 0) {  // M' is one of the inputs, s = 1 (StackedSignals.one_hidden_input)
      matrix = saved[first_input + matrix_input];
    }
    if (matrix_input < 0 || ask_source) {
      py::gil_scoped_acquire gil;
      const py::object& plan = plan_of(ctx);
      const py::object signals = plan.attr("signals");
      py::list inputs;
      for (size_t i = first_input; i < saved.size(); ++i) inputs.append(saved[i]);
      if (matrix_input < 0) {
        const py::tuple pair = signals.attr("one_hidden_matrix")(plan, inputs);
        matrix = pair[0].cast<at::Tensor>();
        scale = pair[1].cast<double>();
      }
      if (ask_source) {
        signal = signals.attr("direct_source")(save_output ? py::cast(output) : py::none(), error, inputs)
                     .cast<at::Tensor>();
      }
    }
    // beta=0: hidden, of delta's shape, is only a placeholder input, never read
    at::Tensor delta = scale == 1.0 ? signal.mm(matrix) : at::addmm(hidden, signal, matrix, 0, scale);
    times_derivative(delta, delta, hidden, ctx->saved_data["activation"].toInt(), ctx->saved_data["slope"].toDouble());
    // Autograd numbers only tensor arguments (absent biases not counted): input 0, W1 1, then b1, W2, b2.
    const bool has_b1 = ctx->saved_data["b1"].toBool(), has_b2 = ctx->saved_data["b2"].toBool();
    size_t edge = 1;
    const bool need_w1 = ctx->needs_input_grad(edge++);
    const bool need_b1 = has_b1 && ctx->needs_input_grad(edge++);
    const bool need_w2 = ctx->needs_input_grad(edge++);
    const bool need_b2 = has_b2 && ctx->needs_input_grad(edge++);
    // one gradient per forward argument: input, W1, b1, W2, b2, inputs, plan, activation, slope, matrix_input,
    // ask_source, save_output
    return {at::Tensor(), need_w1 ? delta.t().mm(input) : at::Tensor(), need_b1 ? delta.sum(0) : at::Tensor(),
            need_w2 ? error.t().mm(hidden) : at::Tensor(), need_b2 ? error.sum(0) : at::Tensor(),
            at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

struct StackNode : public torch::autograd::Function<StackNode> {
  // weights W_1 .. W_L; biases: the present ones, in order (has_bias says which layers have one);
  // activations/slopes: codes of f_1 .. f_K
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& input, at::TensorList weights,
                            at::TensorList biases, const std::vector<bool>& has_bias, at::TensorList inputs,
                            py::object plan,
                            const std::vector<int64_t>& activations, const std::vector<double>& slopes, bool stacked,
                            bool save_output, int64_t mode, bool ask_source) {
    const int64_t n_layers = static_cast<int64_t>(weights.size()), k = n_layers - 1, n = input.size(0);
    at::Tensor stack;
    std::vector<at::Tensor> outs;
    if (stacked) {
      stack = at::empty({k, n, weights[0].size(0)}, input.options());
      outs = stack.unbind(0);
    } else {
      for (int64_t l = 0; l < k; ++l) outs.push_back(at::empty({n, weights[l].size(0)}, input.options()));
    }
    at::Tensor h = input;
    size_t bias = 0;
    for (int64_t l = 0; l < k; ++l) {
      if (has_bias[l]) {
        at::addmm_out(outs[l], biases[bias++], h, weights[l].t());
      } else {
        at::mm_out(outs[l], h, weights[l].t());
      }
      activate_(outs[l], activations[l], slopes[l]);
      h = outs[l];
    }
    const at::Tensor output =
        at::linear(h, weights[k], has_bias[k] ? std::optional<at::Tensor>(biases[bias]) : std::nullopt);
    // saved: input, [output], the stack or h_1 .. h_K, then W_1 .. W_L, the biases and inputs (as the Python
    // node saves them: changing one in place before backward is an error, not a silent wrong gradient)
    std::vector<at::Tensor> saved{input};
    if (save_output) saved.push_back(output);
    if (stacked) {
      saved.push_back(stack);
    } else {
      saved.insert(saved.end(), outs.begin(), outs.end());
    }
    saved.insert(saved.end(), weights.begin(), weights.end());
    saved.insert(saved.end(), biases.begin(), biases.end());
    saved.insert(saved.end(), inputs.begin(), inputs.end());
    ctx->save_for_backward(saved);
    ctx->saved_data["plan"] = c10::IValue::make_capsule(c10::make_intrusive<PythonRef>(std::move(plan)));
    c10::List<bool> bias_flags;
    for (const bool flag : has_bias) bias_flags.push_back(flag);
    ctx->saved_data["has_bias"] = bias_flags;
    ctx->saved_data["stacked"] = stacked;
    ctx->saved_data["save_output"] = save_output;
    ctx->saved_data["n_biases"] = static_cast<int64_t>(biases.size());
    ctx->saved_data["mode"] = mode;
    ctx->saved_data["ask_source"] = ask_source;
    ctx->saved_data["activations"] = activations;
    ctx->saved_data["slopes"] = slopes;
    return output;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const c10::List<bool> has_bias = ctx->saved_data["has_bias"].toBoolList();
    const bool stacked = ctx->saved_data["stacked"].toBool();
    const int64_t n_layers = static_cast<int64_t>(has_bias.size()), k = n_layers - 1;
    const int64_t n_biases = ctx->saved_data["n_biases"].toInt();
    size_t at_ = 0;
    const at::Tensor input = saved[at_++];
    const at::Tensor output = ctx->saved_data["save_output"].toBool() ? saved[at_++] : at::Tensor();
    at::Tensor stack;
    std::vector<at::Tensor> hidden;
    if (stacked) {
      stack = saved[at_++];
      hidden = stack.unbind(0);
    } else {
      hidden.assign(saved.begin() + at_, saved.begin() + at_ + k);
      at_ += k;
    }
    const std::vector<at::Tensor> weights(saved.begin() + at_, saved.begin() + at_ + n_layers);
    at_ += n_layers + n_biases;
    const std::vector<at::Tensor> inputs(saved.begin() + at_, saved.end());
    const at::Tensor error = grads[0].contiguous();

    at::Tensor deltas;  // (K, N, w) when stacked
    std::vector<at::Tensor> delta_list;
    std::vector<std::pair<at::Tensor, double>> chain;  // (M_l, s_l), l = K .. 1
    at::Tensor direct;  // B_1 .. B_K in the stack's layout
    at::Tensor signal = error;  // what a direct rule projects: e, or the source Python gives
    const int64_t mode = ctx->saved_data["mode"].toInt();
    {
      py::gil_scoped_acquire gil;
      const py::object& plan = plan_of(ctx);
      const py::object signals = plan.attr("signals");
      if (mode == kChain) {
        chain = signals.attr("chain")(plan, inputs).cast<std::vector<std::pair<at::Tensor, double>>>();
      } else if (mode == kDirect) {
        direct = signals.attr("direct")(plan, inputs).cast<at::Tensor>();
        if (ctx->saved_data["ask_source"].toBool()) {
          signal = signals.attr("direct_source")(output.defined() ? py::cast(output) : py::none(), error, inputs)
                       .cast<at::Tensor>();
        }
      } else {
        const py::object result = plan.attr("backward_signals")(
            weights, hidden, stacked ? py::cast(stack) : py::none(),
            output.defined() ? py::cast(output) : py::none(), error, inputs);
        if (stacked) {
          deltas = result.cast<at::Tensor>();
        } else {
          delta_list = result.cast<std::vector<at::Tensor>>();
        }
      }
    }
    const auto codes = ctx->saved_data["activations"].toIntVector();
    const auto slopes = ctx->saved_data["slopes"].toDoubleVector();
    if (mode == kChain) {
      // delta_l = s_l (delta_{l+1} M_l) * f'(a_l) from delta_{K+1} = e down, as LayerwiseSignals.signals
      if (stacked) {
        deltas = at::empty_like(stack);
        delta_list = deltas.unbind(0);
      } else {
        for (const auto& h : hidden) delta_list.push_back(at::empty_like(h));
      }
      for (int64_t l = k - 1, c = 0; l >= 0; --l, ++c) {
        const auto& [matrix, scale] = chain[c];
        if (scale == 1.0) {
          at::mm_out(delta_list[l], signal, matrix);
        } else {  // beta=0: delta_list[l] is only written, never read
          at::addmm_out(delta_list[l], delta_list[l], signal, matrix, 0, scale);
        }
        times_derivative(delta_list[l], delta_list[l], hidden[l], codes[l], slopes[l]);
        signal = delta_list[l];
      }
    } else if (mode != kPython && stacked) {
      // delta_k = (s B_k) * f'(a_k) for every k in one bmm, as DirectSignals.signals; f' in one op when every
      // hidden layer has the same activation (Backward.times_derivatives)
      deltas = at::bmm(signal.expand({k, signal.size(0), signal.size(1)}), direct);
      delta_list = deltas.unbind(0);
      bool same = codes[0] != kIdentity;
      for (int64_t l = 1; l < k; ++l) same &= codes[l] == codes[0] && slopes[l] == slopes[0];
      if (same) {
        times_derivative(deltas, deltas, stack, codes[0], slopes[0]);
      } else {
        for (int64_t l = 0; l < k; ++l) times_derivative(delta_list[l], delta_list[l], hidden[l], codes[l], slopes[l]);
      }
    } else if (mode != kPython) {
      std::vector<int64_t> widths;
      for (const auto& h : hidden) widths.push_back(h.size(1));
      const auto parts = signal.mm(direct).split_with_sizes(widths, 1);
      for (int64_t l = 0; l < k; ++l) {
        delta_list.push_back(at::empty_like(hidden[l]));
        times_derivative(delta_list[l], parts[l], hidden[l], codes[l], slopes[l]);
      }
    } else if (stacked) {
      delta_list = deltas.unbind(0);
    }

    // Autograd numbers only tensor arguments: input 0, W_1 .. W_L, then the present biases.
    std::vector<at::Tensor> grad_weights(n_layers), grad_biases(n_layers);
    grad_weights[k] = error.t().mm(hidden[k - 1]);
    grad_weights[0] = delta_list[0].t().mm(input);
    if (k > 1) {
      // as _StackFunction.backward: one bmm with more than one thread or on a GPU, else K - 1 mm
      if (stacked && (input.is_cuda() || at::get_num_threads() > 1)) {
        const auto slices = deltas.slice(0, 1).transpose(1, 2).bmm(stack.slice(0, 0, k - 1)).unbind(0);
        for (int64_t l = 1; l < k; ++l) grad_weights[l] = slices[l - 1];
      } else {
        for (int64_t l = 1; l < k; ++l) grad_weights[l] = delta_list[l].t().mm(hidden[l - 1]);
      }
    }
    if (has_bias[k]) grad_biases[k] = error.sum(0);
    bool hidden_bias = false;
    for (int64_t l = 0; l < k; ++l) hidden_bias |= has_bias[l];
    if (hidden_bias) {
      if (!stacked) {
        for (int64_t l = 0; l < k; ++l) if (has_bias[l]) grad_biases[l] = delta_list[l].sum(0);
      } else {
        const auto sums = deltas.sum(1).unbind(0);
        for (int64_t l = 0; l < k; ++l) if (has_bias[l]) grad_biases[l] = sums[l];
      }
    }
    // one gradient per forward argument, lists flattened: input, W_1 .. W_L, the present biases, then
    // has_bias, the rule's inputs, plan, activations, slopes, stacked, save_output, mode, ask_source
    torch::autograd::variable_list result{at::Tensor()};
    size_t edge = 1;
    for (int64_t l = 0; l < n_layers; ++l) {
      result.push_back(ctx->needs_input_grad(edge++) ? grad_weights[l] : at::Tensor());
    }
    for (int64_t l = 0; l < n_layers; ++l) {
      if (has_bias[l]) result.push_back(ctx->needs_input_grad(edge++) ? grad_biases[l] : at::Tensor());
    }
    result.emplace_back();  // has_bias
    bool input_grads = false;
    for (size_t i = 0; i < inputs.size(); ++i) input_grads |= ctx->needs_input_grad(edge + i);
    if (input_grads) {  // a trained feedback (kp): the rule says which gradient each input gets
      py::gil_scoped_acquire gil;
      const py::object& plan = plan_of(ctx);
      const py::list given = plan.attr("signals").attr("input_grads")(plan, grad_weights, inputs);
      for (size_t i = 0; i < inputs.size(); ++i, ++edge) {
        const bool wanted = ctx->needs_input_grad(edge) && !given[i].is_none();
        result.push_back(wanted ? given[i].cast<at::Tensor>() : at::Tensor());
      }
    } else {
      result.resize(result.size() + inputs.size());
    }
    result.resize(result.size() + 7);
    return result;
  }
};

at::Tensor stack(const at::Tensor& input, const std::vector<at::Tensor>& weights, const std::vector<at::Tensor>& biases,
                 const std::vector<bool>& has_bias, const std::vector<at::Tensor>& inputs, py::object plan,
                 const std::vector<int64_t>& activations, const std::vector<double>& slopes, bool stacked,
                 bool save_output, int64_t mode, bool ask_source) {
  return StackNode::apply(input, at::TensorList(weights), at::TensorList(biases), has_bias, at::TensorList(inputs),
                          std::move(plan), activations, slopes, stacked, save_output, mode, ask_source);
}

at::Tensor apply(const at::Tensor& input, const at::Tensor& w1, const std::optional<at::Tensor>& b1,
                 const at::Tensor& w2, const std::optional<at::Tensor>& b2, const std::vector<at::Tensor>& inputs,
                 py::object plan, int64_t activation, double slope, int64_t matrix_input, bool ask_source,
                 bool save_output) {
  return OneHiddenNode::apply(input, w1, b1, w2, b2, inputs, std::move(plan), activation, slope, matrix_input,
                              ask_source, save_output);
}

}  // namespace feedalign

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "feedalign's fused-path nodes, compiled (feedalign.rules.native)";
  m.def("apply", &feedalign::apply, "y = f(x W1^T + b1) W2^T + b2 as one autograd node");
  m.attr("NODE_NAME") = c10::demangle(typeid(torch::autograd::CppNode<feedalign::OneHiddenNode>).name());
  m.def("stack", &feedalign::stack, "a stack of any depth as one autograd node; the rule's signals from Python");
  m.attr("STACK_NODE_NAME") = c10::demangle(typeid(torch::autograd::CppNode<feedalign::StackNode>).name());
}
