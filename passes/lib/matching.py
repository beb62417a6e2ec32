"""The frame every fusion pass shares: walk each graph, match a pattern at each node, check
it (declining with the reason ``--explain`` shows), rewrite, and count the fused sites and
the activation bytes the rewrite stopped writing and reading.

A fusion pass subclasses :class:`FusionPass` and implements ``match`` (pattern and check,
returning a site or ``None``) and ``rewrite``; :class:`FusionRun` carries what one run over
a model needs: fresh names, shapes on demand, the target's fused ops and the counters.
Fusions whose pattern is a fixed tree of ops are written as rules instead
(:class:`greencc.passes.lib.rules.Rule`, which implements ``match`` from a declared pattern).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, ClassVar

import numpy as np
import onnx_ir as ir

from greencc.ir import infer_shapes, inherit_provenance, node_label, symbolic_dims
from greencc.model import Model
from greencc.passes.lib.graph_edits import (
    NameScope,
    all_graphs,
    constant_array,
    is_onnx_op,
    new_initializer,
    redirect,
    remove_node,
)
from greencc.pipeline.base import Pass, PassResult
from greencc.pipeline.context import PassContext

CONTRIB_DOMAIN = "com.microsoft"
# Ops ONNX Runtime runs without moving data (the output aliases the input): a value they
# produce costs no activation traffic, so removing it saves none.
VIEW_OPS = frozenset({"Reshape", "Squeeze", "Unsqueeze", "Flatten", "Identity"})
# Constants read by checks (scalars, per-channel vectors) are never bigger than this.
MAX_CHECKED_ELEMENTS = 1 << 16


class FusionPass(Pass):
    """Base class of the fusion passes: ``match`` each node, then ``rewrite`` the site.

    ``match(node, run)`` returns a site object when the pattern rooted at ``node`` is
    present and every condition holds; when the pattern is present but a condition fails
    it calls ``run.decline(node, reason)`` and returns ``None``. ``rewrite(site, run)``
    performs the rewrite (through :meth:`FusionRun.replace` or an in-place edit, always
    with provenance) and adds the removed intermediates with :meth:`FusionRun.fused_away`.
    Stats: ``fused`` (sites rewritten) and ``activation_bytes_removed``.
    """

    lossy: ClassVar[bool] = False

    def call(self, model: Model, ctx: PassContext) -> PassResult:
        """Match and rewrite every site of every graph, in graph order."""
        run = FusionRun(self, model, ctx)
        self.prepare(run)
        for graph in all_graphs(model.ir):
            for node in list(graph):
                if node.graph is not graph:
                    continue  # removed by an earlier rewrite in this run
                site = self.match(node, run)
                if site is not None:
                    self.rewrite(site, run)
                    run.fused += 1
        return PassResult(model, run.fused > 0, run.stats())

    def prepare(self, run: FusionRun) -> None:
        """Hook run once before matching (e.g. to read a cached analysis)."""

    def match(self, node: ir.Node, run: FusionRun) -> Any | None:
        """The site rooted at ``node`` when the pattern matches and every check holds."""
        raise NotImplementedError

    def rewrite(self, site: Any, run: FusionRun) -> None:
        """Rewrite a matched ``site``."""
        raise NotImplementedError


class FusionRun:
    """What one fusion pass needs while it runs over one model.

    ``fused`` counts rewritten sites; ``activation_bytes_removed`` sums, over every
    intermediate value a rewrite removed, its static size in bytes times one write plus
    its reads (values of view ops excluded; values whose size is unknown count 0).
    """

    def __init__(self, fusion: FusionPass, model: Model, ctx: PassContext) -> None:
        self.fusion = fusion
        self.model = model
        self.ctx = ctx
        self.names = NameScope(model.ir)
        self.fused = 0
        self.activation_bytes_removed = 0
        self._shapes_inferred = False
        self._fused_ops: set[str] | None = None
        self._node_names: set[str] | None = None
        self._input_symbols: set[str] | None = None

    # -- diagnostics -------------------------------------------------------------------
    def decline(self, node: ir.Node, reason: str) -> None:
        """Record that the pass did not fuse at ``node`` because of ``reason``."""
        self.fusion.decline(self.ctx, node, reason)

    def stats(self) -> dict[str, int | float]:
        """The ledger counters of this run."""
        return {"fused": self.fused, "activation_bytes_removed": self.activation_bytes_removed}

    # -- target ------------------------------------------------------------------------
    def supports(self, node: ir.Node, op: str) -> bool:
        """Whether the target runs fused op ``"domain::Op"``; declines at ``node`` if not.

        Standard ONNX ops need no target support (the opset decides); contrib ops do,
        and without a target nothing non-standard is assumed runnable.
        """
        domain = op.split("::", 1)[0] if "::" in op else ""
        if domain in ("", "ai.onnx"):
            return True
        reason = self.unsupported_reason(op)
        if reason:
            self.decline(node, reason)
            return False
        return True

    def unsupported_reason(self, op: str) -> str:
        """Why the target cannot run ``op`` (``"domain::Op"``), or ``""`` when it can."""
        target = self.ctx.target
        if target is None:
            return f"no target is set, so {op} is not known to run anywhere (give -t TARGET)"
        if self._fused_ops is None:
            self._fused_ops = set(target.supported_fused_ops())
        if op not in self._fused_ops:
            return f"target '{target.name}' does not run {op}"
        return ""

    def slower_reason(self, op: str) -> str:
        """Why the target runs ``op`` (``"domain::Op"``) slower than the ops it would
        replace (its own measurement), or ``""`` when it does not say so."""
        target = self.ctx.target
        return "" if target is None else target.slower_fused_ops().get(op, "")

    def onnx_opset(self) -> int:
        """The model's default-domain (ONNX) opset version."""
        opsets = self.model.ir.opset_imports
        return int(opsets.get("", opsets.get("ai.onnx", 1)))

    def use_domain(self, domain: str, version: int = 1) -> None:
        """Import ``domain`` into the model (new fused ops live there)."""
        self.model.ir.opset_imports.setdefault(domain, version)

    # -- shapes ------------------------------------------------------------------------
    def shape(self, value: ir.Value | None) -> ir.Shape | None:
        """``value``'s shape, running shape inference once per run when it is unknown."""
        if value is None:
            return None
        if not self._shapes_inferred and (value.shape is None or self._vague(value.shape)):
            self._shapes_inferred = True
            infer_shapes(self.model.ir)
        return value.shape

    def _vague(self, shape: ir.Shape) -> bool:
        """Whether ``shape`` has a dim named by no model input (``unk__3``), which
        inference may resolve."""
        if self._input_symbols is None:
            self._input_symbols = set(symbolic_dims(self.model.ir))
        return any(
            not isinstance(d, int) and (d.value is None or d.value not in self._input_symbols)
            for d in shape
        )

    def dtype(self, value: ir.Value | None) -> ir.DataType | None:
        """``value``'s element type, running shape inference once per run when unknown."""
        if value is None:
            return None
        if value.dtype is None and not self._shapes_inferred:
            self._shapes_inferred = True
            infer_shapes(self.model.ir)
        return value.dtype

    def rank(self, value: ir.Value | None) -> int | None:
        """``value``'s rank, or ``None`` when unknown."""
        shape = self.shape(value)
        return None if shape is None else len(shape)

    def static_dims(self, value: ir.Value | None) -> list[int] | None:
        """``value``'s dims as ints, symbolic ones bound through ``ctx.dims``; else ``None``."""
        shape = self.shape(value)
        if shape is None:
            return None
        dims = []
        for dim in shape:
            if isinstance(dim, int):
                dims.append(dim)
            elif dim.value is not None and dim.value in self.ctx.dims:
                dims.append(int(self.ctx.dims[dim.value]))
            else:
                return None
        return dims

    def nbytes(self, value: ir.Value) -> int:
        """Static size of ``value`` in bytes (0 when its shape or dtype is unknown)."""
        dims = self.static_dims(value)
        dtype = value.dtype
        if dims is None or dtype is None:
            return 0
        try:
            itemsize = dtype.itemsize
        except Exception:  # a dtype without a fixed width (strings)
            return 0
        return int(np.prod(dims, dtype=np.int64)) * int(itemsize)

    # -- rewriting ---------------------------------------------------------------------
    def fused_away(self, values: Iterable[ir.Value]) -> None:
        """Count ``values`` (intermediates a rewrite is about to remove) as traffic saved.

        Call it before the rewrite, while their uses are still in place.
        """
        for value in values:
            producer = value.producer()
            if producer is not None and producer.op_type in VIEW_OPS and is_onnx_op(producer):
                continue
            self.activation_bytes_removed += self.nbytes(value) * (1 + len(value.uses()))

    def node_name(self, anchor: ir.Node, op_type: str) -> str:
        """A fresh node name for a fused ``op_type`` next to ``anchor`` (same scope)."""
        if self._node_names is None:
            self._node_names = {
                node.name for graph in self.model.ir.graphs() for node in graph if node.name
            }
        base = anchor.name or op_type
        if base.startswith("/") and "/" in base[1:]:
            base = base.rsplit("/", 1)[0] + "/" + op_type  # keeps the legacy module path
        else:
            base = f"{op_type}_{base}" if base != op_type else base
        candidate, counter = base, 0
        while candidate in self._node_names:
            counter += 1
            candidate = f"{base}_{counter}"
        self._node_names.add(candidate)
        return candidate

    def new_node(
        self,
        op_type: str,
        inputs: Sequence[ir.Value | None],
        attributes: dict[str, Any] | None = None,
        *,
        anchor: ir.Node,
        domain: str = "",
        num_outputs: int = 1,
        output_names: Sequence[str] | None = None,
    ) -> ir.Node:
        """A new node named after ``anchor`` with freshly named outputs (not yet inserted);
        an empty name in ``output_names`` stays empty: an optional output left out, which
        onnxruntime then does not compute (a named one it would)."""
        bases = list(output_names) if output_names else [f"{op_type.lower()}_out"] * num_outputs
        outputs = [ir.Value(name=self.names.fresh(base) if base else "") for base in bases]
        if domain and domain != "ai.onnx":
            self.use_domain(domain)
        # Trailing missing optional inputs are dropped; inner ones stay as empty inputs.
        trimmed = list(inputs)
        while trimmed and trimmed[-1] is None:
            trimmed.pop()
        return ir.node(
            op_type, trimmed, attributes or {}, domain=domain, outputs=outputs,
            name=self.node_name(anchor, op_type),
        )

    def initializer(self, graph: ir.Graph, base: str, data: np.ndarray) -> ir.Value:
        """A new initializer with a fresh name starting with ``base``."""
        return new_initializer(graph, self.names.fresh(base), data)

    def replace(
        self,
        old: ir.Value,
        new_node: ir.Node,
        new: ir.Value,
        matched: Sequence[ir.Node],
        *,
        before: ir.Node,
        extra_nodes: Sequence[ir.Node] = (),
    ) -> None:
        """Insert ``new_node`` (after ``extra_nodes``) before ``before``, give it the
        provenance of ``matched``, route ``old``'s users (and output name) to ``new``, and
        remove the matched nodes nothing reads any more."""
        graph = before.graph
        assert graph is not None
        for extra in extra_nodes:
            graph.insert_before(before, extra)
            inherit_provenance(extra, matched)
        graph.insert_before(before, new_node)
        inherit_provenance(new_node, matched)
        _copy_type(new, old)
        redirect(graph, old, new, before=before, replaced=matched)
        remove_unused(matched)


def _copy_type(new: ir.Value, old: ir.Value) -> None:
    if new.type is None and old.type is not None:
        new.type = old.type
    if new.shape is None and old.shape is not None:
        new.shape = old.shape


def remove_unused(nodes: Sequence[ir.Node]) -> int:
    """Remove those of ``nodes`` whose outputs nothing reads (consumers first); returns
    how many were removed."""
    removed = 0
    pending = [n for n in nodes if n.graph is not None]
    changed = True
    while changed:
        changed = False
        for node in reversed(pending):
            if node.graph is None:
                continue
            if any(out.uses() or out.is_graph_output() for out in node.outputs):
                continue
            remove_node(node)
            removed += 1
            changed = True
        pending = [n for n in pending if n.graph is not None]
    return removed


# -- small pattern vocabulary ----------------------------------------------------------
def producer(value: ir.Value | None, *op_types: str) -> ir.Node | None:
    """The ONNX-domain node producing ``value`` when its op is one of ``op_types``."""
    if value is None:
        return None
    node = value.producer()
    if node is None or node.op_type not in op_types or not is_onnx_op(node):
        return None
    return node


def only_consumer(value: ir.Value) -> ir.Node | None:
    """The single node reading ``value`` (once), when it is not also a graph output."""
    if value.is_graph_output():
        return None
    uses = list(value.uses())
    if len(uses) != 1:
        return None
    return uses[0][0]


def label(node: ir.Node) -> str:
    """How reasons name a node: ``name (Op)``, or ``<unnamed Op -> output>``."""
    return node_label(node)


def single_reader(value: ir.Value) -> ir.Node | None:
    """The one node reading ``value`` (once), whether or not it is also a graph output;
    checks that need it gone use :func:`other_readers`."""
    uses = list(value.uses())
    return uses[0][0] if len(uses) == 1 else None


def other_readers(value: ir.Value, allowed: Iterable[ir.Node]) -> str:
    """Why ``value`` cannot be fused away: read by a node outside ``allowed`` or a graph
    output; ``""`` when only ``allowed`` nodes read it."""
    if value.is_graph_output():
        return f"'{value.name}' is a graph output"
    allowed = set(allowed)
    for user, _ in value.uses():
        if user not in allowed:
            return f"'{value.name}' is also read by {label(user)}"
    return ""


def scalar_constant(value: ir.Value | None) -> float | None:
    """The number a constant of exactly one element holds, else ``None``."""
    array = constant_array(value, max_elements=1)
    if array is None or array.size != 1 or array.dtype.kind not in "fiu":
        return None
    return float(np.asarray(array).reshape(-1)[0])


def int_attr(node: ir.Node, name: str, default: int) -> int:
    """An int attribute of ``node``, or ``default`` when absent."""
    attr = node.attributes.get(name)
    return default if attr is None else attr.as_int()


def float_attr(node: ir.Node, name: str, default: float) -> float:
    """A float attribute of ``node``, or ``default`` when absent."""
    attr = node.attributes.get(name)
    return default if attr is None else attr.as_float()


def ints_attr(node: ir.Node, name: str) -> list[int] | None:
    """An ints attribute of ``node``, or ``None`` when absent."""
    attr = node.attributes.get(name)
    return None if attr is None else [int(v) for v in attr.as_ints()]


def is_float(value: ir.Value | None) -> bool:
    """Whether ``value`` is known to hold float16/32/64 or bfloat16 data."""
    return value is not None and value.dtype in (
        ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.DOUBLE, ir.DataType.BFLOAT16,
    )
