"""greencc IR -> TVM Relax: the graph greencc hands TVM's ONNX importer, and its errors.

TVM's importer (``relax.frontend.onnx``) needs what exporters often leave dynamic: known
shapes for Reshape/Expand/ConstantOfShape. greencc binds the symbolic input dims, re-infers
shapes and runs its ``cleanup`` passes (which fold the shape arithmetic into constants)
before importing; an op TVM cannot import becomes an ``UnsupportedOpError`` naming the node
and the op, never a raw TVM error. A decoder keeps its dims symbolic (``symbolic``): one
build runs prefill and every decode step.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from greencc.errors import GreenccError, UnsupportedOpError
from greencc.ir import to_self_contained_proto
from greencc.ir.shapes import symbolic_dims, with_static_inputs
from greencc.ir.traversal import node_label
from greencc.model import DecoderSpec
from greencc.pipeline.context import PassContext
from greencc.pipeline.manager import PassManager
from greencc.targets.tvm.symbolic import convert_symbolic, name_total_length

if TYPE_CHECKING:
    from greencc.model import Model

# The passes that make a static graph importable: shape arithmetic folded to constants.
PREPARE_PIPELINE = "cleanup"
_ONNX_DOMAINS = ("", "ai.onnx")


def prepare_for_tvm(model: Model, dims: Mapping[str, int] | None) -> Model:
    """A cleaned-up copy of ``model`` that TVM's ONNX importer accepts: static-shaped, or
    for a decoder (a ``DecoderSpec`` in its metadata) with its dims left symbolic.

    ``dims`` binds symbolic input dims (``{"batch": 8}``) of other models; unbound ones
    raise ``UsageError`` naming the input and axis. ``model`` is not modified.
    """

    names = symbolic_dims(model.ir) if DecoderSpec.of(model) is None else []
    bound = {name: int(size) for name, size in (dims or {}).items() if name in names}
    static = with_static_inputs(model, bound) if names else model.clone()
    return PassManager(PREPARE_PIPELINE).run(static, PassContext(verify=False))


def tvm_supported_ops() -> frozenset[str]:
    """ONNX op types TVM's Relax importer converts (its converter table, plus If)."""
    from tvm.relax.frontend.onnx.onnx_frontend import _get_convert_map

    return frozenset([*_get_convert_map(), "If", "Constant"])


def unsupported_nodes(model: Model) -> list[tuple[Any, str]]:
    """``(node, reason)`` for every main-graph node TVM's importer cannot convert."""
    supported = tvm_supported_ops()
    problems = []
    for node in model.graph:
        if node.domain not in _ONNX_DOMAINS:
            problems.append((node, f"TVM's ONNX importer has no '{node.domain}' domain ops"))
        elif node.op_type not in supported:
            problems.append((node, f"TVM's ONNX importer has no converter for '{node.op_type}'"))
    return problems


def check_importable(model: Model) -> None:
    """Raise ``UnsupportedOpError`` naming the first node TVM cannot import (and a count)."""
    problems = unsupported_nodes(model)
    if not problems:
        return
    node, reason = problems[0]
    more = f"; {len(problems) - 1} more such node(s)" if len(problems) > 1 else ""
    raise UnsupportedOpError(
        f"TVM cannot import node {node_label(node)}: {reason}{more}",
        hint="rewrite it into standard ONNX ops with a pass, or compile for ort-cpu, "
        "which runs it",
    )


def to_relax(model: Model) -> Any:
    """Import a prepared (static, cleaned-up) model into a Relax ``IRModule``.

    Weights become constants of the module. Raises ``UnsupportedOpError`` naming the node
    and op when TVM fails to convert one, and ``GreenccError`` for any other import failure.
    """

    check_importable(model)
    proto = to_self_contained_proto(model.ir)
    spec = DecoderSpec.of(model)
    if spec is not None:
        name_total_length(proto, spec)
    return import_proto(
        proto, _importer_class(),
        hint="rewrite the node with a pass (static shapes via --dim help Reshape and Expand), or compile "
        "for ort-cpu, which runs it",
    )


def import_proto(proto: Any, importer_class: type, *, where: str = "", hint: str) -> Any:
    """Run ``importer_class`` (TVM's ONNX importer, or a subclass built on
    :func:`_importer_class`) on a self-contained ONNX ``proto``; an op conversion failure
    becomes ``UnsupportedOpError`` naming the node and op (``where`` is added after the op,
    ``hint`` says what to do)."""
    import onnx

    opset = next(
        (o.version for o in proto.opset_import if o.domain in _ONNX_DOMAINS), None
    )
    importer = importer_class({}, {}, keep_params_in_input=False, sanitize=True)
    # The importer prints its own traceback notes to stdout and warns on checker nits.
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        try:
            return importer.from_onnx(proto.graph, opset or onnx.defs.onnx_opset_version())
        except _NodeImportError as exc:
            raise UnsupportedOpError(
                f"TVM cannot import node '{exc.node}' (op '{exc.op}'){where}: {exc.cause}", hint=hint,
            ) from None
        except GreenccError:
            raise
        except Exception as exc:
            raise GreenccError(
                f"TVM's ONNX importer failed: {type(exc).__name__}: {_first_line(exc)}",
                hint="bind every dynamic dim (--dim NAME=SIZE) and run -O1 or higher first; "
                "otherwise compile for ort-cpu",
            ) from None


class _NodeImportError(Exception):
    def __init__(self, node: str, op: str, cause: str) -> None:
        super().__init__(f"{node} ({op}): {cause}")
        self.node, self.op, self.cause = node, op, cause


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    lines = [line for line in text.splitlines() if line.strip()]
    # TVM's errors end with the C++ check that failed; that line says what went wrong.
    return lines[-1].strip() if lines else type(exc).__name__


def _importer_class() -> type:
    """TVM's ONNX graph importer, with each op conversion failure tagged by its node and
    the symbolic-shape conversions of :func:`~greencc.targets.tvm.symbolic.convert_symbolic`."""
    from tvm.relax.frontend.onnx.onnx_frontend import ONNXGraphImporter

    class NodeNamingImporter(ONNXGraphImporter):
        def _convert_operator(self, op_name: str, inputs: Any, attrs: Any, opset: int) -> Any:
            try:
                symbolic = convert_symbolic(self.bb, op_name, list(inputs), dict(attrs))
                if symbolic is not None:
                    return symbolic
                return super()._convert_operator(op_name, inputs, attrs, opset)
            except Exception as exc:
                node = str(attrs.get("tvm_custom", {}).get("name") or "<unnamed>")
                raise _NodeImportError(node, op_name, _first_line(exc)) from exc

    return NodeNamingImporter


__all__ = ["check_importable", "import_proto", "prepare_for_tvm", "to_relax", "tvm_supported_ops", "unsupported_nodes"]
