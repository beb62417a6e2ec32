"""Frontends: turn an ONNX file, a PyTorch module or a Hugging Face directory into a greencc ``Model``."""

from greencc.frontend.hf import from_pretrained
from greencc.frontend.onnx_file import load
from greencc.frontend.torch_export import from_torch

__all__ = ["load", "from_torch", "from_pretrained"]
