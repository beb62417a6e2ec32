"""The estimate: roofline terms, energy formula, memory levels, dims, deltas."""

from __future__ import annotations

import json

import pytest

from greencc.cost import CostEstimate, HardwareProfile, MemoryLevel, estimate_cost
from greencc.errors import UsageError
from tests.helpers import model_from_text

HEADER = '<ir_version: 10, opset_import: ["": 20]>'

# Round numbers so every expectation can be worked out by hand.
PEAK = 1e9          # MAC/s
PJ_PER_MAC = 1.0
SRAM = MemoryLevel("sram", capacity_bytes=1024, bandwidth_bytes_per_s=1e9, energy_pj_per_byte=0.5)
DRAM = MemoryLevel("dram", capacity_bytes=10**12, bandwidth_bytes_per_s=1e8, energy_pj_per_byte=10.0)
STATIC_W = 2.0
OVERHEAD_S = 1e-6


@pytest.fixture
def toy() -> HardwareProfile:
    return HardwareProfile(
        name="toy",
        description="hand-checkable numbers",
        peak_macs_per_s={"float32": PEAK, "int8": 4 * PEAK},
        memory_levels=[SRAM, DRAM],
        energy_pj_per_mac={"float32": PJ_PER_MAC, "int8": 0.25},
        static_power_w=STATIC_W,
        op_overhead_s=OVERHEAD_S,
    )


def _model(body: str, signature: str):
    return model_from_text(f"{HEADER}\ng {signature} {{\n{body}\n}}")


def test_compute_bound_matmul(toy):
    # 16x16 @ 16x16: 4096 MACs; three 1 KiB tensors, all in SRAM.
    model = _model("y = MatMul(a, b)", "(float[16,16] a, float[16,16] b) => (float[16,16] y)")
    estimate = estimate_cost(model, toy)
    (node,) = estimate.nodes
    compute_s = 4096 / PEAK
    memory_s = 3 * 1024 / SRAM.bandwidth_bytes_per_s
    assert compute_s > memory_s
    assert node.bound == "compute"
    latency_s = compute_s + OVERHEAD_S
    assert estimate.latency_ms == pytest.approx(latency_s * 1e3)
    dynamic_pj = 4096 * PJ_PER_MAC + 3 * 1024 * SRAM.energy_pj_per_byte
    assert estimate.dynamic_energy_mj == pytest.approx(dynamic_pj * 1e-9)
    assert estimate.static_energy_mj == pytest.approx(STATIC_W * latency_s * 1e3)
    assert estimate.energy_mj == pytest.approx(estimate.dynamic_energy_mj + estimate.static_energy_mj)
    assert node.energy_mj == pytest.approx(estimate.energy_mj)


def test_memory_bound_add(toy):
    # Two 16 KiB inputs and a 16 KiB output: all in DRAM; 4096 adds are cheap.
    model = _model("y = Add(a, b)", "(float[64,64] a, float[64,64] b) => (float[64,64] y)")
    estimate = estimate_cost(model, toy)
    (node,) = estimate.nodes
    nbytes = 64 * 64 * 4
    compute_s = (4096 / 2) / PEAK  # a FLOP costs half a MAC
    memory_s = 3 * nbytes / DRAM.bandwidth_bytes_per_s
    assert memory_s > compute_s
    assert node.bound == "memory"
    assert node.latency_ms == pytest.approx((memory_s + OVERHEAD_S) * 1e3)
    dynamic_pj = 4096 * PJ_PER_MAC / 2 + 3 * nbytes * DRAM.energy_pj_per_byte
    assert estimate.dynamic_energy_mj == pytest.approx(dynamic_pj * 1e-9)
    assert estimate.static_energy_mj == pytest.approx(STATIC_W * (memory_s + OVERHEAD_S) * 1e3)


def test_int8_macs_use_the_int8_peak_and_energy(toy):
    model = _model(
        "y = MatMulInteger(a, b)", "(uint8[32,32] a, int8[32,32] b) => (int32[32,32] y)"
    )
    estimate = estimate_cost(model, toy)
    (node,) = estimate.nodes
    macs = 32 * 32 * 32
    reads = 2 * 32 * 32  # 1 KiB each: SRAM
    writes = 32 * 32 * 4  # 4 KiB: DRAM
    compute_s = macs / (4 * PEAK)
    memory_s = reads / SRAM.bandwidth_bytes_per_s + writes / DRAM.bandwidth_bytes_per_s
    assert node.latency_ms == pytest.approx((max(compute_s, memory_s) + OVERHEAD_S) * 1e3)
    dynamic_pj = macs * 0.25 + reads * SRAM.energy_pj_per_byte + writes * DRAM.energy_pj_per_byte
    assert estimate.dynamic_energy_mj == pytest.approx(dynamic_pj * 1e-9)


def test_memory_level_follows_tensor_size(toy):
    assert toy.memory_level_for(1024).name == "sram"
    assert toy.memory_level_for(1025).name == "dram"
    assert toy.memory_level_for(10**15).name == "dram"  # past every level: the last one
    small = estimate_cost(_model("y = Relu(x)", "(float[16,16] x) => (float[16,16] y)"), toy)
    large = estimate_cost(_model("y = Relu(x)", "(float[16,17] x) => (float[16,17] y)"), toy)
    relu_pj_small = 256 * PJ_PER_MAC / 2 + 2 * 1024 * SRAM.energy_pj_per_byte
    relu_pj_large = 272 * PJ_PER_MAC / 2 + 2 * 1088 * DRAM.energy_pj_per_byte
    assert small.dynamic_energy_mj == pytest.approx(relu_pj_small * 1e-9)
    assert large.dynamic_energy_mj == pytest.approx(relu_pj_large * 1e-9)


def test_weights_live_where_the_whole_weight_set_fits(toy):
    # Each 800 B weight fits SRAM, but both (1,600 B) must stay resident: DRAM.
    values = ", ".join(["1.0"] * 200)
    model = model_from_text(f"""{HEADER}
g (float[200] x) => (float[200] y) <float[200] w1 = {{{values}}}, float[200] w2 = {{{values}}}> {{
  t = Mul(x, w1)
  y = Mul(t, w2)
}}""")
    estimate = estimate_cost(model, toy)
    first = estimate.nodes[0]
    # x and t (800 B each) in SRAM; w1 in DRAM.
    expected_s = 800 / SRAM.bandwidth_bytes_per_s * 2 + 800 / DRAM.bandwidth_bytes_per_s
    assert first.latency_ms == pytest.approx((expected_s + OVERHEAD_S) * 1e3)
    assert estimate.weight_bytes == 1600 and estimate.parameters == 400


def test_totals_are_sums_over_nodes(toy):
    model = _model(
        "t = MatMul(a, b)\n u = Relu(t)\n y = Add(u, a)",
        "(float[8,8] a, float[8,8] b) => (float[8,8] y)",
    )
    estimate = estimate_cost(model, toy)
    assert estimate.latency_ms == pytest.approx(sum(n.latency_ms for n in estimate.nodes))
    assert estimate.energy_mj == pytest.approx(sum(n.energy_mj for n in estimate.nodes))
    assert estimate.bytes_read == sum(n.bytes_read for n in estimate.nodes)
    assert estimate.flops == 64 + 64
    classes = estimate.by_op_class
    assert classes["matmul"]["macs"] == 512 and classes["matmul"]["nodes"] == 1
    assert classes["elementwise"]["nodes"] == 2
    assert sum(c["energy_mj"] for c in classes.values()) == pytest.approx(estimate.energy_mj)
    assert estimate.method == "model:cost(toy)"
    assert estimate.calibrated is False


def test_symbolic_dims_bind_default_to_one_and_are_recorded(toy):
    model = _model(
        "y = MatMul(x, w)", "(float[batch,seq,8] x, float[8,4] w) => (float[batch,seq,4] y)"
    )
    bound = estimate_cost(model, toy, dims={"batch": 2, "seq": 16})
    assert bound.total_macs == 2 * 16 * 8 * 4
    assert bound.dims == {"batch": 2, "seq": 16}
    partly = estimate_cost(model, toy, dims={"batch": 3, "unused": 9})
    assert partly.dims == {"batch": 3, "seq": 1}
    assert partly.total_macs == 3 * 1 * 8 * 4
    assert any("seq" in note for note in partly.notes)
    # the input model keeps its symbolic dims
    assert [str(d) for d in model.graph.inputs[0].shape] == ["batch", "seq", "8"]


def test_bad_dims_and_bad_arguments(toy):
    model = _model("y = Relu(x)", "(float[n] x) => (float[n] y)")
    with pytest.raises(UsageError):
        estimate_cost(model, toy, dims={"n": 0})
    with pytest.raises(UsageError, match="available profiles"):
        estimate_cost(model, "no-such-profile")
    with pytest.raises(UsageError):
        estimate_cost("model.onnx", toy)


def test_accepts_ir_model_and_profile_names():
    model = _model("y = MatMul(a, b)", "(float[4,4] a, float[4,4] b) => (float[4,4] y)")
    from_name = estimate_cost(model.ir, "nvidia-h100")
    assert from_name.profile == "nvidia-h100"
    assert from_name.total_macs == 64


def test_to_dict_is_json_and_delta_subtracts(toy):
    small = estimate_cost(_model("y = MatMul(a, b)", "(float[4,8] a, float[8,4] b) => (float[4,4] y)"), toy)
    big = estimate_cost(_model("y = MatMul(a, b)", "(float[8,8] a, float[8,8] b) => (float[8,8] y)"), toy)
    data = json.loads(json.dumps(big.to_dict(include_nodes=True)))
    assert data["total_macs"] == 512 and data["nodes"][0]["op_type"] == "MatMul"
    assert "nodes" not in big.to_dict()
    assert data["energy_mj"] == pytest.approx(big.energy_mj)
    change = small.delta(big)
    assert change["macs"] == 128 - 512
    assert change["macs_by_dtype"] == {"float32": 128 - 512}
    assert change["energy_mj"] == pytest.approx(small.energy_mj - big.energy_mj)
    assert change["latency_ms"] == pytest.approx(small.latency_ms - big.latency_ms)
    assert change["bytes"] == (small.bytes_read + small.bytes_written) - (big.bytes_read + big.bytes_written)
    assert change["energy_pct"] < 0
    assert isinstance(big, CostEstimate)


def test_module_provenance_is_reported(toy):
    model = _model("y = Relu(x)", "(float[4] x) => (float[4] y)")
    model.graph.node(0).metadata_props["pkg.torch.onnx.name_scopes"] = "['', 'encoder.layer.0', 'relu']"
    estimate = estimate_cost(model, toy)
    assert estimate.nodes[0].module == "encoder.layer.0"
