"""greencc's built-in passes; importing this package registers them."""

from greencc.passes import cleanup, fusion, prune, quantize  # noqa: F401
