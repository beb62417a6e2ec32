"""greencc's built-in targets and hardware profiles (profiles/*.json); importing this
package registers the targets. Backends are imported lazily, on first use."""

# Registers "ort-cpu", "tvm-llvm", "tvm-aarch64" and "asic-int8" (the TVM ones import TVM
# only when used).
from greencc.targets import asic_int8, ort_cpu, tvm_aarch64, tvm_llvm  # noqa: F401
