"""Shape arithmetic on Python ints: the ops that compute shapes (``Shape -> Gather -> Concat ->
Reshape``) run on ints and int lists, so that under ``torch.export`` symbolic dims stay
symbolic ints instead of becoming tensors read back at run time.

A value here is an int (ONNX rank 0) or a list of ints (rank 1).
"""

from __future__ import annotations

import operator
from typing import Any

from greencc.lowering.registry import shape_function
from greencc.lowering.standard_ops import INTEGER_DTYPES, torch_dtype


def _broadcast(fn: Any, a: Any, b: Any) -> Any:
    if isinstance(a, list) and isinstance(b, list):
        if len(a) == 1 and len(b) != 1:
            a = a * len(b)
        elif len(b) == 1 and len(a) != 1:
            b = b * len(a)
        return [fn(x, y) for x, y in zip(a, b, strict=True)]
    if isinstance(a, list):
        return [fn(x, b) for x in a]
    if isinstance(b, list):
        return [fn(a, y) for y in b]
    return fn(a, b)


def _truncating_div(a: Any, b: Any) -> Any:
    # Shapes are non-negative, where floor and truncation agree; symbolic ints have no trunc.
    return a // b


_ELEMENTWISE = {
    "Add": operator.add, "Sub": operator.sub, "Mul": operator.mul, "Div": _truncating_div,
    "Mod": operator.mod, "Equal": operator.eq, "Less": operator.lt, "Greater": operator.gt,
    "LessOrEqual": operator.le, "GreaterOrEqual": operator.ge, "And": operator.and_,
    "Or": operator.or_,
}


def _elementwise(fn: Any) -> Any:
    def on_ints(a: Any, b: Any, **_: Any) -> Any:
        return _broadcast(fn, a, b)

    on_ints.__name__ = f"shape_{fn.__name__}"
    return on_ints


for _op, _fn in _ELEMENTWISE.items():
    shape_function(_op)(_elementwise(_fn))


def _fold(fn: Any) -> Any:
    def on_ints(*xs: Any) -> Any:
        out = xs[0]
        for x in xs[1:]:
            out = _broadcast(fn, out, x)
        return out

    on_ints.__name__ = f"shape_fold_{fn.__name__}"
    return on_ints


shape_function("Max")(_fold(max))
shape_function("Min")(_fold(min))


@shape_function("Neg")
def shape_neg(x: Any) -> Any:
    return [-v for v in x] if isinstance(x, list) else -x


@shape_function("Not")
def shape_not(x: Any) -> Any:
    return [not v for v in x] if isinstance(x, list) else not x


@shape_function("Identity")
def shape_identity(x: Any) -> Any:
    return x


@shape_function("Cast")
def shape_cast(x: Any, *, to: int, saturate: int = 1, round_mode: str = "up") -> Any:
    dtype = torch_dtype(to)
    kind = int if dtype in INTEGER_DTYPES else (bool if str(dtype) == "torch.bool" else float)
    return [kind(v) for v in x] if isinstance(x, list) else kind(x)


@shape_function("Gather")
def shape_gather(data: Any, indices: Any, *, axis: int = 0) -> Any:
    if isinstance(indices, list):
        return [data[i] for i in indices]
    return data[indices]


@shape_function("Concat")
def shape_concat(*xs: Any, axis: int = 0) -> list[Any]:
    out: list[Any] = []
    for x in xs:
        out += x if isinstance(x, list) else [x]
    return out


@shape_function("Unsqueeze")
def shape_unsqueeze(x: Any, axes: Any = None) -> list[Any]:
    return x if isinstance(x, list) else [x]


@shape_function("Squeeze")
def shape_squeeze(x: Any, axes: Any = None) -> Any:
    return x[0] if isinstance(x, list) and len(x) == 1 else x


@shape_function("Reshape")
def shape_reshape(x: Any, target: Any, *, allowzero: int = 0) -> Any:
    target = target if isinstance(target, list) else [target]
    if len(target) == 0:
        return x[0] if isinstance(x, list) else x
    return x if isinstance(x, list) else [x]


@shape_function("Slice")
def shape_slice(x: list[Any], starts: Any, ends: Any, axes: Any = None, steps: Any = None) -> list[Any]:
    start = starts[0] if isinstance(starts, list) else starts
    end = ends[0] if isinstance(ends, list) else ends
    step = (steps[0] if isinstance(steps, list) else steps) if steps is not None else 1
    return x[start:end:step]


@shape_function("Where")
def shape_where(condition: Any, a: Any, b: Any) -> Any:
    if not isinstance(condition, list):
        return a if condition else b
    width = len(condition)
    a = a if isinstance(a, list) else [a] * width
    b = b if isinstance(b, list) else [b] * width
    return [x if c else y for c, x, y in zip(condition, a, b, strict=True)]
