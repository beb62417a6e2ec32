"""Symbolic shapes through TVM's ONNX importer, so that one decoder build serves every
batch, prompt length and cache length (Relax shape variables instead of bound dims).

A decoder's exported graph computes its causal mask and head reshapes from ``Shape`` at
run time. TVM's importer turns those into Relax shape values, except in three places, which
:func:`convert_symbolic` takes over:

    Reshape(prim value, [-1] | [1])       -> a one-element shape value (not a tensor)
    Range(0, n, 1) with n a shape value   -> arange(0, n) of length n (not a data-dependent
                                             length no later shape can be proven equal to)
    Reshape(x, [..., -1, ...]), x symbolic -> the -1 solved by cancelling equal dims, e.g.
                                             [b, 4, t, 8] -> [-1, t, 8] is [4·b, t, 8]
                                             (TVM's b·t·32 // (8·t) leaves a floordiv that
                                             LLVM code generation rejects)

Each returns ``None`` for inputs it does not cover, and the importer's own converter runs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import onnx

    from greencc.model import DecoderSpec


def convert_symbolic(bb: Any, op_name: str, inputs: list[Any], attrs: dict[str, Any]) -> Any:
    """The Relax expression for an ONNX node whose symbolic shapes TVM's importer loses, or
    ``None`` to leave the node to the importer (see the module docstring)."""
    import tvm
    from tvm import relax

    if op_name == "Reshape" and inputs and tvm.ir.is_prim_expr(inputs[0]):
        return relax.ShapeExpr([inputs[0]])
    if op_name == "Reshape" and len(inputs) == 2:
        return _reshape_with_hole(bb, inputs[0], inputs[1], bool(attrs.get("allowzero", 0)))
    if op_name == "Range" and len(inputs) == 3:
        return _symbolic_range(bb, inputs)
    return None


def name_total_length(proto: onnx.ModelProto, spec: DecoderSpec) -> None:
    """Size ``attention_mask``'s length (``total_seq``) as ``past_seq + seq`` in ``proto``.

    The exporter names it on its own, so TVM would see an unrelated variable and could not
    prove the mask as long as the concatenated past and new keys.
    """
    dims = {value.name: value.type.tensor_type.shape.dim for value in proto.graph.input}
    past, ids, mask = dims.get(spec.past_names()[0]), dims.get("input_ids"), dims.get("attention_mask")
    if past is None or ids is None or mask is None or len(past) != 4 or len(ids) != 2 or len(mask) != 2:
        return
    past_name, seq_name = past[2].dim_param, ids[1].dim_param
    if past_name and seq_name and mask[1].dim_param:
        mask[1].dim_param = f"{past_name} + {seq_name}"


def _as_int(value: Any) -> int | None:
    import tvm

    if isinstance(value, int):
        return value
    if isinstance(value, tvm.tirx.IntImm):
        return int(value.value)
    return None


def _scalar(value: Any) -> Any:
    """A Range bound as a PrimExpr or int, or None when it is a tensor computed at run time."""
    import tvm

    if tvm.ir.is_prim_expr(value):
        return value
    if isinstance(value, tvm.ir.GenericConst):
        array = value.value.numpy()
        if array.size == 1 and array.dtype.kind in "iu":
            return int(array.item())
    return None


def _symbolic_range(bb: Any, inputs: list[Any]) -> Any:
    import tvm
    from tvm import relax

    start, limit, delta = (_scalar(value) for value in inputs)
    if start is None or limit is None or not isinstance(delta, int) or delta <= 0:
        return None
    if not any(tvm.ir.is_prim_expr(bound) for bound in (start, limit)):
        return None
    return bb.normalize(relax.op.arange(start, limit, delta, dtype="int64"))


def _shape_values(value: Any) -> list[Any] | None:
    import tvm
    from tvm import relax

    if isinstance(value, relax.ShapeExpr):
        return list(value.values)
    if isinstance(value, tvm.ir.GenericConst):
        array = value.value.numpy()
        if array.ndim == 1 and array.dtype.kind in "iu":
            return [int(item) for item in array]
    return None


def _reshape_with_hole(bb: Any, data: Any, new_shape: Any, allowzero: bool) -> Any:
    import tvm
    from tvm import relax

    if tvm.ir.is_prim_expr(data) or isinstance(data, (relax.ShapeExpr, tvm.ir.GenericConst)):
        return None
    shape = getattr(data.ty, "shape", None)
    target = _shape_values(new_shape)
    if not isinstance(shape, relax.ShapeExpr) or target is None:
        return None
    dims = list(shape.values)
    if all(_as_int(dim) is not None for dim in dims):
        return None  # static: the importer's own -1 is exact
    solved = solve_hole(dims, target, allowzero)
    if solved is None:
        return None
    return bb.normalize(relax.op.reshape(data, relax.ShapeExpr(solved)))


def solve_hole(dims: list[Any], target: list[Any], allowzero: bool) -> list[Any] | None:
    """``target`` (ONNX Reshape's shape: 0 copies an input dim unless ``allowzero``, one -1
    is inferred) as explicit dims of ``dims``'s tensor; the -1 is the product of the input
    dims no output dim equals, over the output dims left. ``None`` without exactly one -1."""
    import tvm

    analyzer = tvm.sym.Analyzer()
    explicit = [dims[i] if _as_int(d) == 0 and not allowzero and i < len(dims) else d for i, d in enumerate(target)]
    holes = [i for i, d in enumerate(explicit) if _as_int(d) == -1]
    if len(holes) != 1:
        return None
    unmatched = list(dims)
    divisor: Any = 1
    for index, dim in enumerate(explicit):
        if index == holes[0]:
            continue
        match = next((k for k, left in enumerate(unmatched) if analyzer.can_prove_equal(left, dim)), None)
        if match is None:
            divisor = divisor * dim
        else:
            unmatched.pop(match)
    product: Any = 1
    for dim in unmatched:
        product = product * dim
    explicit[holes[0]] = analyzer.simplify(product if _as_int(divisor) == 1 else product // divisor)
    return explicit


__all__ = ["convert_symbolic", "name_total_length", "solve_hole"]
