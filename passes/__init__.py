"""greencc's built-in passes; importing this package registers them (and the
``attention-heads`` analysis in ``lib``)."""

from greencc.passes import cleanup, fusion, lib, prune, quantize, train  # noqa: F401
from greencc.passes.lib import attention_heads  # noqa: F401
