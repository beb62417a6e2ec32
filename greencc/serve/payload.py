"""Inference payloads: JSON ``{"inputs": {name: nested list}}`` checked against a compiled
model's signature and turned into arrays, or a :class:`PayloadError` whose HTTP status
(400 malformed, 413 too large, 422 wrong names, shapes or dtypes) and message name the
problem.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from greencc.errors import InputMismatchError, UsageError
from greencc.target.artifact import CompiledModel

# Defaults of the service's limits: a body of 8 MiB and 1M elements across inputs keep
# one request's arrays (8 MB of float64 at most) far below the process's memory.
DEFAULT_MAX_BODY_BYTES = 8 << 20
DEFAULT_MAX_ELEMENTS = 1 << 20


class PayloadError(UsageError):
    """A request the service refuses; ``status`` is its HTTP status code (4xx)."""

    def __init__(self, status: int, message: str, *, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.status = status


@dataclass(frozen=True)
class Limits:
    """Request size limits: body bytes and array elements summed over the inputs."""

    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    max_elements: int = DEFAULT_MAX_ELEMENTS


def parse_json(body: bytes, limits: Limits) -> dict[str, Any]:
    """The request body as a JSON object (413 when larger than the limit, 400 when not JSON)."""
    if len(body) > limits.max_body_bytes:
        raise PayloadError(413, f"request body of {len(body)} bytes exceeds the limit of "
                           f"{limits.max_body_bytes} bytes", hint="send fewer rows per request")
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise PayloadError(400, f"request body is not valid JSON: {exc}",
                           hint='send {"inputs": {"NAME": [[...]]}}') from None
    if not isinstance(data, dict):
        raise PayloadError(400, f"request body must be a JSON object, got {type(data).__name__}",
                           hint='send {"inputs": {"NAME": [[...]]}}')
    return data


def feeds_from_payload(data: Mapping[str, Any], compiled: CompiledModel, limits: Limits) -> dict[str, np.ndarray]:
    """``data["inputs"]`` as arrays of the signature's dtypes, validated (names, dtypes,
    ranks, static dims, symbolic dims agreeing, size)."""
    inputs = data.get("inputs")
    specs = {s.name: s for s in compiled.model.inputs}
    expected = ", ".join(str(s) for s in specs.values())
    if not isinstance(inputs, dict):
        raise PayloadError(422, "the request has no 'inputs' object",
                           hint=f'send {{"inputs": {{...}}}} with the model\'s inputs: {expected}')
    unknown = sorted(set(inputs) - set(specs))
    if unknown:
        raise PayloadError(422, f"unknown input name(s) {unknown}", hint=f"the model's inputs are {expected}")
    missing = [name for name in specs if name not in inputs]
    if missing:
        raise PayloadError(422, f"missing input(s) {missing}", hint=f"the model's inputs are {expected}")
    arrays: dict[str, np.ndarray] = {}
    elements = 0
    for name, spec in specs.items():
        array = _array(name, inputs[name], spec.dtype)
        elements += array.size
        if elements > limits.max_elements:
            raise PayloadError(413, f"the inputs hold more than {limits.max_elements} elements "
                               f"(input '{name}' reaches {elements})", hint="send fewer rows per request")
        arrays[name] = array
    try:
        return compiled.check_feeds(arrays)
    except InputMismatchError as exc:
        raise PayloadError(422, exc.message, hint=exc.hint) from None


def _array(name: str, value: Any, dtype: str) -> np.ndarray:
    try:
        raw = np.asarray(value)
    except ValueError:
        raw = None
    if raw is None or raw.dtype == object:
        raise PayloadError(422, f"input '{name}' is not a rectangular array of numbers "
                           "(ragged rows or non-numbers)", hint="give equal-length rows of numbers")
    kind = raw.dtype.kind
    target = np.dtype(dtype) if dtype not in ("unknown", "string") else raw.dtype
    if kind not in "biuf" or (target.kind in "iub" and kind == "f") or (target.kind == "b" and kind != "b"):
        got = {"f": "floating-point", "U": "text", "S": "bytes"}.get(kind, raw.dtype.name)
        raise PayloadError(422, f"input '{name}' has {got} values, the model expects {dtype}",
                           hint=f"send {'integers' if target.kind in 'iu' else dtype} values")
    if target.kind in "iu" and raw.size and (raw.min() < np.iinfo(target).min or raw.max() > np.iinfo(target).max):
        raise PayloadError(422, f"input '{name}' has values outside the range of {dtype}")
    return raw.astype(target, copy=False)


__all__ = ["DEFAULT_MAX_BODY_BYTES", "DEFAULT_MAX_ELEMENTS", "Limits", "PayloadError",
           "feeds_from_payload", "parse_json"]
