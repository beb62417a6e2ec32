"""Lowering greencc models back to PyTorch: ``lower_to_torch`` turns a model (standard ONNX ops,
ONNX Runtime's com.microsoft fused ops and its integer/QDQ ops) into a ``torch.fx.GraphModule``
that computes what ONNX Runtime computes, with the weights as parameters, for fine-tuning and
for torch compilers; ``write_back`` copies trained weights into the IR. Torch is imported here,
so nothing below ``greencc.lowering`` imports this package at ``import greencc``.
"""

from greencc.lowering.registry import converts, supported_ops
from greencc.lowering.torch_module import (
    LoweredModule,
    lower_to_torch,
    trainable_initializers,
    write_back,
)

__all__ = ["LoweredModule", "converts", "lower_to_torch", "supported_ops", "trainable_initializers", "write_back"]
