"""greencc's built-in targets, grouped by backend (ort/, tvm/, asic/), their tags and
hardware profiles (profiles/*.json); importing this package registers the targets.
Backends are imported lazily, on first use."""

# Registers "ort-cpu", "tvm-llvm", "tvm-aarch64", "asic-int8" and "torch-inductor" (the TVM and
# torch ones import their backend only when used).
from greencc.targets import tags  # noqa: F401
from greencc.targets.asic import int8  # noqa: F401
from greencc.targets.ort import cpu  # noqa: F401
from greencc.targets.torch import inductor  # noqa: F401
from greencc.targets.tvm import aarch64, llvm  # noqa: F401
