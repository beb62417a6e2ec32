"""int8 quantization passes: ``quantize-int8`` (static QDQ or dynamic, placed where the
target has integer kernels, with sensitivity-driven float fallback) and ``smooth-quant``
(SmoothQuant's exact migration of activation outliers into weights).

Importing this package registers both passes.
"""

from . import quantize_int8, smooth_quant  # noqa: F401
