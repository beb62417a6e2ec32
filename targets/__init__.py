"""greencc's built-in targets and hardware profiles (profiles/*.json); importing this
package registers the targets. Backends are imported lazily, on first use."""

# Registers "ort-cpu" and "tvm-llvm" (which imports TVM only when used).
from greencc.targets import ort_cpu, tvm_llvm  # noqa: F401
