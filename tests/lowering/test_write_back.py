"""Round trip: lower -> change a weight in torch -> write_back -> ONNX Runtime on the IR sees it."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import greencc as gc  # noqa: E402
from greencc.errors import UsageError  # noqa: E402
from greencc.ir import get_meta  # noqa: E402
from greencc.lowering import lower_to_torch, write_back  # noqa: E402
from tests.lowering.helpers import TINY, TOLERANCE, max_error, ort_run, tiny_feeds  # noqa: E402


def _fused_bert() -> gc.Model:
    return gc.optimize(TINY["bert"](), "-O2", verify=False)[0]


def test_a_weight_changed_in_torch_reaches_onnx_runtime() -> None:
    model = _fused_bert()
    feeds = tiny_feeds("bert", 3)
    before = ort_run(model, feeds)
    lowered = lower_to_torch(model)
    names = lowered.parameter_names()
    torch_name = next(t for t, i in names.items() if model.graph.initializers[i].const_value.numpy().ndim == 2
                      and any(u.op_type == "MatMul" for u, _ in model.graph.initializers[i].uses()))
    weight = getattr(lowered.module, torch_name)
    with torch.no_grad():
        weight.add_(0.1 * torch.randn(weight.shape, generator=torch.Generator().manual_seed(0)))
    written = write_back(lowered, model, provenance="test{step=1}")
    assert written == [names[torch_name]]
    after = ort_run(model, feeds)
    assert max_error(after, before) > 1e-3
    assert max_error(lowered.run(feeds), after) <= TOLERANCE
    value = model.graph.initializers[names[torch_name]]
    assert value.dtype == gc.ir.DataType.FLOAT
    assert value.metadata_props["greencc.provenance"] == '"test{step=1}"'
    assert all(get_meta(user, "provenance") == "test{step=1}" for user, _ in value.uses())


def test_gradients_reach_the_parameters() -> None:
    model = _fused_bert()
    lowered = lower_to_torch(model)
    feeds = tiny_feeds("bert", 4)
    (out,) = lowered(*(torch.from_numpy(feeds[name]) for name in lowered.input_names))
    out.pow(2).mean().backward()
    grads = [p.grad for p in lowered.module.parameters()]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0


def test_unchanged_weights_are_not_written() -> None:
    model = _fused_bert()
    assert write_back(lower_to_torch(model), model, provenance="noop") == []


def test_a_shape_change_is_refused() -> None:
    model = _fused_bert()
    lowered = lower_to_torch(model)
    torch_name, ir_name = next(iter(lowered.parameter_names().items()))
    setattr(lowered.module, torch_name, torch.nn.Parameter(torch.zeros(3, 3)))
    before = model.graph.initializers[ir_name].const_value.numpy().copy()
    with pytest.raises(UsageError, match="shape"):
        write_back(lowered, model, provenance="bad")
    np.testing.assert_array_equal(model.graph.initializers[ir_name].const_value.numpy(), before)
