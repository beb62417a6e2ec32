"""Quantization passes: ``quantize-int8`` (static QDQ or dynamic, placed where the target
has integer kernels, with sensitivity-driven float fallback), ``smooth-quant``
(SmoothQuant's exact migration of activation outliers into weights) and
``quantize-weights`` (weight-only 4/8-bit blocks for MatMulNBits, RTN or GPTQ).

Importing this package registers the three passes.
"""

from . import quantize_int8, quantize_weights, smooth_quant  # noqa: F401
