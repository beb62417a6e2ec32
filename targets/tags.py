"""Tags: named presets (as in TVM) bundling a target with a hardware profile.

``greencc.compile(model, target="x86-avx512")`` lowers with the tag's target and scores
costs with its profile (``targets/profiles/<profile>.json``). A tag whose target is not
installed resolves to ``TargetUnavailableError`` saying so.
"""

from __future__ import annotations

from greencc.target.registry import register_tag

# tag -> (target name, hardware profile name)
TAGS: dict[str, tuple[str, str]] = {
    "x86-avx512": ("ort-cpu", "x86-avx512"),
    # TVM cross-compiling for the Cortex-A76 (run under qemu-user on other machines).
    "arm-cortex-a76": ("tvm-aarch64", "arm-cortex-a76"),
    "nvidia-h100": ("cuda-inductor", "nvidia-h100"),
    "asic-int8-systolic": ("asic-int8", "asic-int8-systolic"),
}

for _tag, (_target, _profile) in TAGS.items():
    register_tag(_tag, _target, _profile)

__all__ = ["TAGS"]
