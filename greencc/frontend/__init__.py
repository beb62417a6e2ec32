"""Frontends: turn an ONNX file or a PyTorch module into a greencc ``Model``."""

from greencc.frontend.onnx_file import load
from greencc.frontend.torch_export import from_torch

__all__ = ["load", "from_torch"]
