"""int8 quantization building blocks: range observers, quantization parameters and the
one-pass collection of activation ranges over calibration data.

The passes in ``greencc.passes.quantize`` build on these::

    from greencc.data import as_calibration
    from greencc.quant import collect_ranges, quant_params
    ranges = collect_ranges(model, as_calibration(ctx.calibration, model), names, ("minmax", "entropy"),
                            executor=ctx.executor)
    scale, zero_point = quant_params(ranges[name]["entropy"], "int8", symmetric=True)
"""

from greencc.quant.collect import collect_abs_max, collect_ranges, iter_intermediates, run_observers
from greencc.quant.observers import (
    METHODS,
    EntropyObserver,
    MinMaxObserver,
    MseObserver,
    Observer,
    PercentileObserver,
    TensorRange,
    make_observer,
    weight_range,
)
from greencc.quant.params import dequantize, fake_quantize, quant_params, quantize, quantized_range

__all__ = [
    "METHODS", "EntropyObserver", "MinMaxObserver", "MseObserver", "Observer",
    "PercentileObserver", "TensorRange", "make_observer", "weight_range", "collect_ranges",
    "collect_abs_max", "iter_intermediates", "run_observers", "quant_params", "quantize",
    "dequantize", "fake_quantize", "quantized_range",
]
