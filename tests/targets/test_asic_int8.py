"""The asic-int8 target: QDQ (static) and dynamic int8 graphs lowered through TVM with the
int8 GEMM/conv tiles and quantization ops in the simulator, checked bit for bit against the
numpy reference of the same graph (every accelerator call, and the whole digits CNN), the
simulated figures in the compiled model and the ledger, the host's share named with its
reasons, errors naming node and op, save/load, and availability.

Skipped as a whole only when apache-tvm cannot be imported. MiniLM runs in
``test_asic_minilm.py`` (opt-in: about a minute).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import greencc as gc
from greencc.errors import UnsupportedOpError
from greencc.target import FALLBACK_PREFIX, registered_targets, resolve_target
from tests import models
from tests.helpers import model_from_text

pytest.importorskip("tvm", reason="apache-tvm is not installed (pip install 'greencc[tvm]')")

from greencc.targets.asic.int8 import AsicCompiledModel, AsicInt8  # noqa: E402
from greencc.targets.asic.reference import check_calls, compiled_graph, reference_outputs  # noqa: E402

CUSTOM_OP = """<ir_version: 10, opset_import: ["" : 17, "com.example" : 1]>
frob (float[2, 4] x) => (float[2, 4] y) {
  [relu_in] a = Relu(x)
  [frob] b = com.example.Frobnicate(a)
  [relu_out] y = Relu(b)
}"""


def _compile(model: gc.Model, mode: str, calibration: list, dims: dict) -> AsicCompiledModel:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return gc.compile(model, "asic-int8", f"cleanup,fuse,dce,quantize-int8{{mode={mode}}}",
                          calibration=calibration, dims=dims, threads=1)


@pytest.fixture(scope="module", params=["static", "dynamic"])
def digits(request):
    data = models.digits_data()
    calibration = [{"image": data.train_x[i : i + 32]} for i in range(0, 256, 32)]
    compiled = _compile(models.digits_cnn_model(), request.param, calibration, {"batch": 64})
    return request.param, compiled, data


def test_registered_and_available_with_the_tag():
    assert registered_targets()["asic-int8"] is AsicInt8
    target = resolve_target("asic-int8-systolic")
    assert target.name == "asic-int8" and target.selected_profile_name == "asic-int8-systolic"
    assert target.available().ok
    assert target.array().rows == 128


def test_a_profile_without_an_array_makes_it_unavailable_with_the_reason():
    availability = resolve_target("asic-int8", profile="x86-avx512").available()
    assert not availability.ok and "describes no systolic array" in availability.reason


def test_digits_cnn_int8_tiles_run_in_the_simulator_bit_exact(digits):
    mode, compiled, data = digits
    kinds = [c.kind for c in compiled.calls]
    assert kinds.count("conv") == 2 and kinds.count("gemm") == 1  # every int8 product
    feeds = {"image": data.test_x[:64]}
    outputs, session = compiled.run_traced(feeds)
    proto, placement = compiled_graph(compiled)
    assert len(session.records) == len(compiled.calls)
    assert check_calls(session.records, proto, placement) == []  # every call, every bit
    reference = reference_outputs(proto, placement, feeds)["logits"]
    if mode == "static":
        # Only exact float ops (MaxPool, a mean of 16 values, Flatten) run on the host between
        # the calls: the whole network's output is identical too.
        assert np.array_equal(outputs["logits"], reference)
    else:
        np.testing.assert_allclose(outputs["logits"], reference, rtol=0, atol=1e-4)
    accuracy = float((outputs["logits"].argmax(1) == data.test_y[:64]).mean())
    assert accuracy >= 0.9


def test_static_conv_groups_fuse_relu_and_requantization(digits):
    mode, compiled, _ = digits
    if mode != "static":
        pytest.skip("the requantizing epilogue is a static-QDQ form")
    convs = [c for c in compiled.calls if c.kind == "conv"]
    assert all(c.attrs["out"] == "quant" and c.attrs["relu"] for c in convs)
    assert all(any(name.endswith("QuantizeLinear") for name in c.replaced) for c in convs)


def test_simulated_figures_reach_the_compiled_model_and_the_ledger(digits):
    _, compiled, data = digits
    compiled({"image": data.test_x[:64]})
    sim = compiled.simulation
    assert sim is not None and sim.cycles > 0 and sim.energy_mj > 0
    assert sim.macs == sum(c.macs for c in sim.calls) == 64 * (8 * 9 * 64 + 16 * 72 * 16 + 16 * 10)
    assert sim.simulated_ms == pytest.approx(sim.cycles / 1e9 * 1e3)
    assert set(sim.bytes_by_level) == {"dram", "weight_sram", "activation_sram", "accumulator_sram"}
    report = compiled.report
    assert report.simulated["cycles"] == sim.cycles and report.simulated["energy_mj"] == sim.energy_mj
    simulated = [f for f in report.energy_figures() if f["kind"] == "simulated"]
    assert simulated and simulated[0]["final_mj"] == sim.energy_mj
    text = report.to_console()
    assert f"{sim.cycles:,} cycles" in text and "host CPU ran" in text
    assert type(report).from_dict(report.to_dict()).simulated == report.simulated


def test_host_nodes_are_listed_with_why(digits):
    _, compiled, _ = digits
    assert "the accelerator has no kernel for MaxPool" in compiled.host_nodes.values()
    partitions = compiled_target_partitions(compiled)
    host = [p for p in partitions if p.target == FALLBACK_PREFIX + "tvm-llvm"]
    assert host and any("the accelerator has no kernel for MaxPool" in p.reason for p in host)
    assert any(p.target == "asic-int8" for p in partitions)


def compiled_target_partitions(compiled: AsicCompiledModel) -> list:
    return resolve_target("asic-int8").capability(compiled.model)


def test_save_and_load_keep_outputs_and_simulation(digits, tmp_path):
    _, compiled, data = digits
    feeds = {"image": data.test_x[:64]}
    before = compiled(feeds)["logits"]
    compiled.save(tmp_path / "asic")
    again = gc.CompiledModel.load(tmp_path / "asic")
    assert isinstance(again, AsicCompiledModel)
    assert np.array_equal(again(feeds)["logits"], before)
    assert again.simulation.cycles == compiled.simulation.cycles


def test_tiny_bert_static_every_call_bit_exact():
    ids, mask = models.tiny_bert_inputs(batch=2, seq=16)
    feeds = {"input_ids": ids.numpy(), "attention_mask": mask.numpy()}
    compiled = _compile(models.tiny_bert_model(dynamic=True), "static", [feeds], {"batch": 2, "seq": 16})
    assert sum(c.kind == "gemm" for c in compiled.calls) == 12
    outputs, session = compiled.run_traced(feeds)
    proto, placement = compiled_graph(compiled)
    assert check_calls(session.records, proto, placement) == []
    reference = reference_outputs(proto, placement, feeds)
    for name, value in outputs.items():  # host float ops (LayerNorm, Softmax) differ by rounding
        np.testing.assert_allclose(value, reference[name], rtol=0, atol=1e-5)
    # float MatMuls (attention scores) stay on the host, and say why
    assert any("not an int8 product" in why for why in compiled.host_nodes.values())


def test_the_quantize_pass_sees_the_accelerators_integer_kernels():
    from greencc.passes.quantize.placement import target_int8_kernels

    kernels = target_int8_kernels(resolve_target("asic-int8"))
    assert {"MatMulInteger", "ConvInteger", "DynamicQuantizeLinear", "QuantizeLinear", "DequantizeLinear"} <= kernels


def test_a_node_nothing_runs_is_named_with_its_op():
    model = model_from_text(CUSTOM_OP)
    partitions = resolve_target("asic-int8").capability(model)
    assert [p.target for p in partitions] == [FALLBACK_PREFIX + "tvm-llvm", "unsupported", FALLBACK_PREFIX + "tvm-llvm"]
    with pytest.raises(UnsupportedOpError, match=r"node 'frob'.*com\.example::Frobnicate"):
        resolve_target("asic-int8").lower(model)


def test_a_failing_accelerator_call_names_its_node_and_op(digits, monkeypatch):
    import greencc.targets.asic.relax as asic_relax

    _, compiled, data = digits
    real = asic_relax.run_call

    def faulty(call, args, simulator):
        if call.kind == "conv":
            raise ValueError("stuck MAC cell")
        return real(call, args, simulator)

    monkeypatch.setattr(asic_relax, "run_call", faulty)
    with pytest.raises(gc.GreenccError, match=r"node '/conv1/Conv(_ConvInteger)?' \(op '(Conv|ConvInteger)'\) failed: ValueError: stuck MAC cell"):
        compiled({"image": data.test_x[:64]})
