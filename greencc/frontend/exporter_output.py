"""Keeping the torch exporters quiet, and one-line summaries of their failures.

Shared by the generic torch frontend and the decoder frontend.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Iterator

from greencc.errors import GreenccError

# Loggers the exporters chat on (registration notices, constant-folding retries...).
_NOISY_LOGGERS = (
    "torch.onnx", "torch.export", "torch._export", "torch._dynamo", "onnxscript", "onnx_ir", "transformers",
)


def exception_summary(exc: BaseException) -> str:
    """``"TypeName: first line of the message"`` for an exporter's exception."""
    message = exc.message if isinstance(exc, GreenccError) else str(exc)
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[0] if lines else ''}".rstrip(": ")


@contextlib.contextmanager
def quiet_exporters(enabled: bool = True) -> Iterator[None]:
    """Silence the exporters' prints, warnings and log records; failures still raise."""
    if not enabled:
        yield
        return
    prefixes = tuple(name + "." for name in _NOISY_LOGGERS)
    names = [*_NOISY_LOGGERS, *(n for n in logging.root.manager.loggerDict if n.startswith(prefixes))]
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    sink = io.StringIO()
    try:
        for logger in loggers:
            # Children at NOTSET inherit ERROR from the raised parents, new ones included.
            if logger.level < logging.ERROR:
                logger.setLevel(logging.ERROR)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
                yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)
