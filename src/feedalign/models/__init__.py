"""The models feedalign builds and trains, and the drop-in modules that let every rule reach them.

- :mod:`.mlp`: multi-layer perceptrons (``mlp("784-800-800-10")``), what the fused path trains;
- :mod:`.conv`: LeNet-5, Nøkland's CIFAR network, the CIFAR ResNets;
- :mod:`.sequence_classifiers`: a small vision transformer and an LSTM classifier;
- :mod:`.sequence`: attention and LSTM/GRU modules built from ``nn.Linear``, which ``convert`` swaps in
  for torch's so a rule reaches their weights;
- :mod:`.sizes` and :mod:`.registry`: size strings and the names ``--model`` takes.
"""
from .conv import BasicBlock, CifarResNet, ShortcutA, lenet5, nokland_conv, resnet, resnet20, resnet32, resnet56
from .mlp import ACTIVATIONS, mlp
from .registry import (INPUT_LAYOUTS, MLP_RECIPE, MODELS, NAMED_ARCHITECTURES, ModelSpec, Recipe, build_architecture,
                       check_architecture, flat_inputs, image_inputs, input_layout, is_user_model, native_inputs,
                       recipe_for, register_model, user_builder)
from .sequence_classifiers import SequenceClassifier, VisionTransformer, lstm_classifier, vit_tiny
from .sizes import available_memory_bytes, check_memory, parse_sizes, training_bytes

__all__ = ["ACTIVATIONS", "BasicBlock", "CifarResNet", "INPUT_LAYOUTS", "MLP_RECIPE", "MODELS", "Recipe", "recipe_for", "NAMED_ARCHITECTURES", "ModelSpec",
           "SequenceClassifier", "ShortcutA", "VisionTransformer", "available_memory_bytes", "build_architecture",
           "check_architecture", "check_memory", "flat_inputs", "image_inputs", "input_layout", "is_user_model",
           "lenet5", "lstm_classifier", "mlp", "native_inputs", "nokland_conv", "parse_sizes", "register_model",
           "resnet", "resnet20", "resnet32", "resnet56", "training_bytes", "user_builder", "vit_tiny"]
