"""greencc's built-in passes; importing this package registers them."""

from greencc.passes import cleanup, fusion  # noqa: F401
