"""Add hardware in one file: a smaller int8 accelerator (a 32x32 systolic array at 800 MHz
with its own SRAMs and energy table) as a greencc target, built on asic-int8's simulator.

    python examples/custom_target.py          # registers it here and compares it with asic-int8
    pip install --no-deps --no-build-isolation examples/custom_target/   # a plugin (entry point)
    greencc targets                           # now lists edge-npu-32x32 in every process

``examples/custom_target/pyproject.toml`` declares the entry point
(``[project.entry-points."greencc.targets"] edge-npu-32x32 = "custom_target:EdgeNpu"``); see
docs/asic.md for the walk-through.
"""

from __future__ import annotations

import numpy as np
import onnx.helper
import onnx.numpy_helper

import greencc as gc
from greencc.cost.profile import HardwareProfile
from greencc.target import register_target, registered_targets
from greencc.targets.asic.int8 import AsicInt8
from greencc.targets.asic.spec import derive_profile

NAME = "edge-npu-32x32"

# The hardware: asic-int8-systolic's numbers with a 32x32 array and a mobile-class memory
# system. derive_profile keeps the cost model's roofline (int8 peak, pJ/MAC, SRAM and DRAM
# levels) in agreement with the array the simulator runs. All values are assumptions.
PROFILE = derive_profile(
    HardwareProfile.named("asic-int8-systolic"),
    NAME,
    "A hypothetical edge NPU: 32x32 int8 systolic array at 800 MHz (0.82 TMAC/s), 1 MiB of "
    "SRAM, LPDDR4X-4266 x32 (17 GB/s), 0.1 W static.",
    rows=32,
    cols=32,
    clock_hz=8e8,
    weight_sram_bytes=256 * 1024,
    activation_sram_bytes=640 * 1024,
    accumulator_sram_bytes=128 * 1024,
    dram_bandwidth_bytes_per_s=17.0e9,
    vector_lanes=32,
    energy_pj_per_mac=0.2,  # smaller array: clock tree and registers weigh more per MAC
    energy_pj_per_byte={"dram": 40.0, "weight_sram": 1.5, "activation_sram": 1.5, "accumulator_sram": 1.0},
    static_power_w=0.1,
)


class EdgeNpu(AsicInt8):
    """The edge NPU: asic-int8's lowering and simulator with this file's profile."""

    description = "edge NPU: 32x32 int8 systolic array at 800 MHz (simulated) + host CPU through TVM"
    profile = PROFILE
    profile_name = PROFILE.name


def mlp(seed: int = 0) -> gc.Model:
    """A 64 -> 256 -> 10 MLP with random weights (stand-in for your model)."""
    rng = np.random.default_rng(seed)
    weights = {"w1": rng.normal(0, 0.1, (64, 256)), "b1": rng.normal(0, 0.1, 256),
               "w2": rng.normal(0, 0.1, (256, 10)), "b2": np.zeros(10)}
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], name="fc1"),
         onnx.helper.make_node("Relu", ["h"], ["r"], name="relu"),
         onnx.helper.make_node("Gemm", ["r", "w2", "b2"], ["y"], name="fc2")],
        "mlp", [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["batch", 64])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["batch", 10])],
        [onnx.numpy_helper.from_array(v.astype(np.float32), k) for k, v in weights.items()])
    return gc.load(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)]))


def main() -> None:
    if NAME not in registered_targets():  # installed as a plugin, the entry point did this
        register_target(NAME)(EdgeNpu)
    rng = np.random.default_rng(1)
    calibration = [{"x": rng.normal(size=(64, 64)).astype(np.float32)} for _ in range(4)]
    feeds = {"x": rng.normal(size=(64, 64)).astype(np.float32)}
    for target in ("asic-int8", NAME):
        compiled = gc.compile(mlp(), target, "cleanup,quantize-int8{mode=static}", calibration=calibration,
                              dims={"batch": 64}, threads=1)
        compiled(feeds)
        sim = compiled.simulation
        print(f"{target:16s} {sim.array:>7s} array: {sim.cycles:8,d} cycles = {sim.simulated_ms * 1e3:7.2f} us, "
              f"{sim.macs:,d} MACs, utilization {sim.utilization:.1%}, {sim.energy_mj * 1e3:.3f} uJ simulated "
              f"(estimate {compiled.report.rows[-1].est_energy_mj * 1e3:.3f} uJ)")


if __name__ == "__main__":
    main()
