"""Strict JSON for greencc's files (report.json, greencc.json): standard JSON has no NaN or
Infinity, so non-finite floats are written as the strings ``"NaN"``, ``"Infinity"`` and
``"-Infinity"`` and read back as floats; malformed or hostile text is a ``UsageError``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

from greencc.errors import UsageError

NON_FINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


def dumps(value: Any, *, default: Callable[[Any], Any] | None = None, indent: int | None = 2) -> str:
    """``value`` as strict JSON text (RFC 8259): non-finite floats become strings."""
    return json.dumps(_finite(value, default), indent=indent, allow_nan=False)


def loads(text: str, what: str) -> dict[str, Any]:
    """Parse a JSON object written by :func:`dumps` (non-finite strings back to floats);
    ``UsageError`` naming ``what`` for text that is not a JSON object, or nests too deeply."""
    try:
        data = json.loads(text, parse_constant=_reject_constant, object_hook=_restore_non_finite)
    except (ValueError, RecursionError) as exc:
        reason = "it nests too deeply" if isinstance(exc, RecursionError) else str(exc)
        raise UsageError(f"{what} is not valid JSON: {reason}") from None
    if not isinstance(data, dict):
        raise UsageError(f"{what} is not a JSON object (it holds a {type(data).__name__})")
    return data


def _finite(value: Any, default: Callable[[Any], Any] | None) -> Any:
    # Iterative would be safer on hostile input, but everything written here is greencc's own
    # shallow data (report rows, manifests), never user-shaped nesting.
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "Infinity" if value > 0 else "-Infinity"
        return value
    if isinstance(value, (str, int, bool)) or value is None:
        return value
    if isinstance(value, dict):
        return {key: _finite(item, default) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item, default) for item in value]
    if default is None:
        raise TypeError(f"{type(value).__name__} is not JSON-serialisable")
    return _finite(default(value), default)


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not a JSON value")


def _restore_non_finite(obj: dict[str, Any]) -> dict[str, Any]:
    return {key: NON_FINITE[item] if isinstance(item, str) and item in NON_FINITE else item
            for key, item in obj.items()}
