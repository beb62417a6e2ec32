"""The greencc exception family.

Every error a user can cause derives from :class:`GreenccError`; each message names the
thing, the cause and the fix. The CLI maps each class to a documented exit status.
"""

from __future__ import annotations


class GreenccError(Exception):
    """Base class of every greencc error; ``exit_code`` is the CLI's exit status for it."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        self.message = message
        self.hint = hint
        super().__init__(f"{message} ({hint})" if hint else message)


class UsageError(GreenccError):
    """Bad options, an unknown pass or target name, a malformed pipeline string."""

    exit_code = 2


class ModelLoadError(GreenccError):
    """The model file is missing, empty, truncated, not ONNX, unsafe or invalid."""

    exit_code = 3


class UnsupportedOpError(GreenccError):
    """An operator that greencc or the chosen target cannot handle."""

    exit_code = 4


class ExportError(GreenccError):
    """Tracing a PyTorch module to ONNX failed with every exporter tried."""

    exit_code = 3


class VerificationError(GreenccError):
    """A pass changed what the model computes beyond its tolerance."""

    exit_code = 5


class PassFailedError(GreenccError):
    """A pass raised or broke the graph; names the pass, the passes before it and the node."""

    exit_code = 5

    def __init__(
        self,
        message: str,
        *,
        pass_name: str,
        previous: list[str],
        node: str | None = None,
        reproducer: str | None = None,
        hint: str | None = None,
    ) -> None:
        self.pass_name = pass_name
        self.previous = previous
        self.node = node
        self.reproducer = reproducer
        super().__init__(message, hint=hint)


class TargetUnavailableError(GreenccError):
    """The requested target cannot run here (missing library, no device)."""

    exit_code = 6


class InputMismatchError(GreenccError):
    """Feeds given at call time do not match the model's inputs (names, dtypes, shapes)."""

    exit_code = 7


class SystemResourceError(GreenccError):
    """The operating system refused: a file could not be read or written (permissions, a
    full disk, a name too long) or memory ran out. Nothing half-written is left behind."""

    exit_code = 8


class PassError(GreenccError):
    """Raised by a pass author's code to decline loudly; ``node`` names where it happened."""

    def __init__(self, message: str, *, node: str | None = None, hint: str | None = None) -> None:
        self.node = node
        super().__init__(message, hint=hint)


EXIT_CODES: dict[int, str] = {
    0: "success",
    1: "internal error (a bug: please report it with the command line)",
    2: "usage error: bad option, unknown pass or target, malformed pipeline",
    3: "the model could not be loaded or exported",
    4: "unsupported operator",
    5: "a pass failed or verification found a numerical difference",
    6: "the target is not available on this machine",
    7: "inputs do not match the model's signature",
    8: "the system refused: permission denied, disk full, name too long, out of memory",
}
