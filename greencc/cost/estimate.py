"""``estimate_cost``: roofline latency and energy per inference of a model on a profile.

Per node: MACs/FLOPs from ``ops.py``, bytes read and written from static shapes, a memory
level per tensor, roofline latency, dynamic energy; summed, plus static power × latency.
Units throughout: ms and mJ per inference, MACs, FLOPs, bytes.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import onnx_ir as ir

from greencc.cost.ops import OP_CLASSES, OpWork, ShapeUnknown, op_work, static_shape
from greencc.cost.profile import DTYPE_CLASSES, HardwareProfile, MemoryLevel
from greencc.errors import UsageError
from greencc.ir.meta import get_meta, source_module
from greencc.ir.shapes import with_static_inputs
from greencc.model import Model

log = logging.getLogger(__name__)

_PJ_TO_MJ = 1e-9
_S_TO_MS = 1e3


@dataclass
class NodeCost:
    """The estimated cost of one node per inference.

    ``macs`` (MACs) and ``flops`` (other arithmetic ops) in dtype class ``dtype``;
    ``bytes_read`` / ``bytes_written`` in bytes; ``latency_ms`` in ms (roofline time plus
    dispatch overhead); ``energy_mj`` in mJ (dynamic plus the static power drawn during
    ``latency_ms``); ``bound`` is ``compute``, ``memory`` or ``overhead`` (which term
    set the roofline time); ``module`` is the torch module it came from, when known.
    ``weight_bytes`` are the bytes of the weights it reads; ``unpriced`` says why its work
    was counted as 0 MACs or some of its tensors as 0 bytes (``"shape unknown"``, ``"no
    cost function"``, ``"cost function failed"``, ``"tensor sizes unknown"``), else None.
    """

    name: str
    op_type: str
    op_class: str
    dtype: str
    macs: int
    flops: int
    bytes_read: int
    bytes_written: int
    latency_ms: float
    energy_mj: float
    module: str | None = None
    domain: str = ""
    bound: str = "overhead"
    weight_bytes: int = 0
    unpriced: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict of this node's cost."""
        return asdict(self)


@dataclass
class CostEstimate:
    """The cost model's estimate for one model on one hardware profile, per inference.

    ``macs_by_dtype`` in MACs per dtype class (only classes with MACs); ``flops`` in
    non-MAC arithmetic ops; ``bytes_read`` / ``bytes_written`` in bytes; ``latency_ms``
    in ms; energies in mJ;
    ``by_op_class`` maps an op class to its ``macs``, ``latency_ms``, ``energy_mj`` and
    ``nodes``; ``parameters`` counts scalar weights and ``weight_bytes`` their bytes.
    ``unknown_ops`` lists ops without a cost function (counted as 0 MACs); ``notes`` say
    what else was assumed (unbound dims, shapes that stayed unknown).
    """

    profile: str
    dims: dict[str, int]
    macs_by_dtype: dict[str, int]
    flops: int
    bytes_read: int
    bytes_written: int
    latency_ms: float
    dynamic_energy_mj: float
    static_energy_mj: float
    by_op_class: dict[str, dict[str, float]]
    nodes: list[NodeCost]
    parameters: int
    weight_bytes: int
    unknown_ops: list[str]
    method: str = ""
    calibrated: bool = False
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.method:
            self.method = f"model:cost({self.profile})"

    @property
    def total_macs(self) -> int:
        """All MACs, whatever their dtype class."""
        return sum(self.macs_by_dtype.values())

    @property
    def energy_mj(self) -> float:
        """Dynamic plus static energy per inference, in mJ."""
        return self.dynamic_energy_mj + self.static_energy_mj

    def unpriced_nodes(self) -> list[dict[str, Any]]:
        """The nodes whose work this estimate could not count (see ``NodeCost.unpriced``),
        each with ``name``, ``op_type``, ``reason``, ``weight_bytes`` and ``weight_share``:
        the fraction of the model's weight bytes the node reads, the part of the model it
        stands for (a product's MACs grow with its weights)."""
        total = self.weight_bytes or 1
        return [
            {"name": n.name, "op_type": n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}::{n.op_type}",
             "reason": n.unpriced, "weight_bytes": n.weight_bytes, "weight_share": n.weight_bytes / total}
            for n in self.nodes if n.unpriced is not None
        ]

    def to_dict(self, *, include_nodes: bool = False) -> dict[str, Any]:
        """A JSON-serialisable dict; per-node costs only with ``include_nodes=True``."""
        data: dict[str, Any] = {
            "profile": self.profile,
            "method": self.method,
            "calibrated": self.calibrated,
            "dims": dict(self.dims),
            "macs_by_dtype": dict(self.macs_by_dtype),
            "total_macs": self.total_macs,
            "flops": self.flops,
            "bytes_read": self.bytes_read,
            "bytes_written": self.bytes_written,
            "latency_ms": self.latency_ms,
            "dynamic_energy_mj": self.dynamic_energy_mj,
            "static_energy_mj": self.static_energy_mj,
            "energy_mj": self.energy_mj,
            "by_op_class": {k: dict(v) for k, v in self.by_op_class.items()},
            "parameters": self.parameters,
            "weight_bytes": self.weight_bytes,
            "unknown_ops": list(self.unknown_ops),
            "unpriced_nodes": self.unpriced_nodes(),
            "notes": list(self.notes),
        }
        if include_nodes:
            data["nodes"] = [node.to_dict() for node in self.nodes]
        return data

    def delta(self, other: CostEstimate) -> dict[str, Any]:
        """How this estimate differs from ``other``: ``self - other`` per quantity.

        Call it as ``after.delta(before)``: negative ``energy_mj`` means energy saved.
        Keys: ``latency_ms``, ``energy_mj``, ``dynamic_energy_mj``, ``static_energy_mj``
        (ms, mJ), ``macs``, ``macs_by_dtype``, ``flops``, ``bytes_read``,
        ``bytes_written``, ``bytes``, ``parameters``, ``weight_bytes``, and
        ``latency_pct`` / ``energy_pct`` (percent of ``other``; ``None`` when it is 0).
        """
        if not isinstance(other, CostEstimate):
            raise UsageError(f"delta needs another CostEstimate, got {type(other).__name__}")
        dtypes = sorted(set(self.macs_by_dtype) | set(other.macs_by_dtype))
        return {
            "latency_ms": self.latency_ms - other.latency_ms,
            "energy_mj": self.energy_mj - other.energy_mj,
            "dynamic_energy_mj": self.dynamic_energy_mj - other.dynamic_energy_mj,
            "static_energy_mj": self.static_energy_mj - other.static_energy_mj,
            "macs": self.total_macs - other.total_macs,
            "macs_by_dtype": {
                d: self.macs_by_dtype.get(d, 0) - other.macs_by_dtype.get(d, 0) for d in dtypes
            },
            "flops": self.flops - other.flops,
            "bytes_read": self.bytes_read - other.bytes_read,
            "bytes_written": self.bytes_written - other.bytes_written,
            "bytes": (self.bytes_read + self.bytes_written) - (other.bytes_read + other.bytes_written),
            "parameters": self.parameters - other.parameters,
            "weight_bytes": self.weight_bytes - other.weight_bytes,
            "latency_pct": _percent(self.latency_ms, other.latency_ms),
            "energy_pct": _percent(self.energy_mj, other.energy_mj),
        }


def _percent(new: float, old: float) -> float | None:
    return None if old == 0 else 100.0 * (new - old) / old


def estimate_cost(
    model: Any, profile: HardwareProfile | str, *, dims: Mapping[str, int] | None = None
) -> CostEstimate:
    """Estimate latency (ms) and energy (mJ) per inference of ``model`` on ``profile``.

    ``model`` is a greencc ``Model`` or an ``onnx_ir.Model``; ``profile`` a
    :class:`HardwareProfile` or a built-in profile name. ``dims`` binds symbolic input
    dims (``{"batch": 1, "seq": 128}``); unbound ones count as 1 and are noted. The model
    is never modified: the estimate runs on a clone with static shapes.

    Per node: roofline latency ``max((MACs + FLOPs/2) / peak[dtype], Σ bytes /
    bandwidth[level]) + op_overhead_s``; dynamic energy ``MACs·pJ/MAC[dtype] +
    FLOPs·pJ/MAC[dtype]/2 + Σ bytes·pJ/byte[level]``. Static energy is
    ``static_power_w × total latency``. Weights sit at the level that holds the whole
    weight set (they must stay resident between inferences); activations at the level
    that holds the tensor.
    """
    ir_model = _ir_model_of(model)
    if isinstance(profile, str):
        profile = HardwareProfile.named(profile)
    elif not isinstance(profile, HardwareProfile):
        raise UsageError(
            f"profile must be a HardwareProfile or a profile name, got {type(profile).__name__}",
            hint=f"available profiles: {', '.join(HardwareProfile.available_profiles())}",
        )
    notes: list[str] = []
    prepared, used_dims = _bind_dims(ir_model, dims, notes)
    static = with_static_inputs(prepared, used_dims)
    _bound_data_dependent_slices(static, notes)
    return _estimate(static, ir_model, profile, used_dims, notes)


def _bound_data_dependent_slices(model: ir.Model, notes: list[str]) -> None:
    """Price the dims a Slice takes from the inputs' values (``trim-padded-keys``' kept keys)
    at their upper bound, the sliced input's size: shape inference names such a dim with a
    fresh symbol, which then flows to every op after it; each of those symbols is bound to
    the bound everywhere, so those ops are priced rather than left unshaped. Noted."""
    bounds: dict[str, int] = {}
    for node in model.graph:
        if node.op_type != "Slice" or node.domain not in ("", "ai.onnx") or not node.inputs:
            continue
        source, out = node.inputs[0], node.outputs[0]
        if source is None or source.shape is None or out.shape is None or len(out.shape) != len(source.shape):
            continue
        for axis, dim in enumerate(out.shape):
            size = source.shape[axis]
            if not isinstance(dim, int) and dim.value and isinstance(size, int):
                bounds[dim.value] = max(bounds.get(dim.value, 0), size)
    if not bounds:
        return
    for node in model.graph:
        for value in node.outputs:
            if value.shape is not None and any(not isinstance(d, int) and d.value in bounds for d in value.shape):
                value.shape = ir.Shape([bounds[d.value] if not isinstance(d, int) and d.value in bounds else d
                                        for d in value.shape])
    notes.append(f"dims taken from the inputs' values by {len(bounds)} Slice(s) priced at their upper bound (the whole axis)")


def _ir_model_of(model: Any) -> ir.Model:
    if isinstance(model, Model):
        return model.ir
    if isinstance(model, ir.Model):
        return model
    raise UsageError(
        f"estimate_cost expects a greencc Model or an onnx_ir Model, got {type(model).__name__}",
        hint="load it first with greencc.load(path)",
    )


def _bind_dims(
    model: ir.Model, dims: Mapping[str, int] | None, notes: list[str]
) -> tuple[ir.Model, dict[str, int]]:
    """Bind every symbolic input dim: given ones from ``dims``, the rest to 1 (noted).

    Unnamed dynamic dims get a name on a clone (``with_static_inputs`` needs names).
    """
    given = dict(dims or {})
    for name, size in given.items():
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise UsageError(f"dim '{name}' must be a positive integer, got {size!r}")
    used: dict[str, int] = {}
    unnamed = False
    for value in model.graph.inputs:
        for dim in value.shape or ():
            if isinstance(dim, int):
                continue
            if dim.value is None:
                unnamed = True
            elif dim.value not in used:
                used[dim.value] = given.get(dim.value, 1)
                if dim.value not in given:
                    notes.append(f"dim '{dim.value}' was not bound; assumed 1")
    if not unnamed:
        return model, used
    model = model.clone()
    for value in model.graph.inputs:
        if value.shape is None:
            continue
        new_dims: list[int | str | None] = []
        for axis, dim in enumerate(value.shape):
            if isinstance(dim, int) or dim.value is not None:
                new_dims.append(dim if isinstance(dim, int) else dim.value)
                continue
            name = f"{value.name}_dim{axis}"
            new_dims.append(name)
            used[name] = 1
            notes.append(f"input '{value.name}' axis {axis} is dynamic and unnamed; assumed 1")
        value.shape = ir.Shape(new_dims)
    return model, used


def _nbytes(value: ir.Value | None) -> int | None:
    """Bytes of ``value`` from its static shape and dtype; ``None`` when unknown."""
    if value is None:
        return 0
    shape = static_shape(value)
    if shape is None or value.dtype is None:
        return None
    try:
        bits = value.dtype.bitwidth
    except TypeError:  # strings and other types without a fixed width
        return None
    return math.ceil(math.prod(shape) * bits / 8)


def _weight_nbytes(node: ir.Node) -> int:
    """Bytes of the weights (initializers and constants) ``node`` reads."""
    return sum(
        v.const_value.nbytes if v.const_value is not None else (_nbytes(v) or 0)
        for v in node.inputs if v is not None and _is_weight(v)
    )


def _is_weight(value: ir.Value) -> bool:
    if value.is_initializer() or value.const_value is not None:
        return True
    producer = value.producer()
    return producer is not None and producer.op_type == "Constant" and producer.domain in ("", "ai.onnx")


def _dtype_order(item: tuple[str, int]) -> int:
    return DTYPE_CLASSES.index(item[0]) if item[0] in DTYPE_CLASSES else len(DTYPE_CLASSES)


def _label(node: ir.Node) -> str:
    return f"{node.domain}::{node.op_type}" if node.domain not in ("", "ai.onnx") else node.op_type


def _sparsity(node: ir.Node, profile: HardwareProfile) -> tuple[float, int | None, float] | None:
    """``(MAC factor, weight input index, stored bits per element / dtype bits)`` for a node
    whose weight a pass made sparse (``greencc.sparsity`` metadata), where ``profile``
    exploits it: 2:4 on sparse tensor cores (half the MACs; values at half plus 2 bits of
    position per kept value), any zeros on zero-skipping hardware (MACs × density; values
    at density plus a 1-bit map). ``(1, None, 1)`` where the profile exploits none of it;
    ``None`` for a dense node.

    The density is counted on the weight the node reads now, not taken from the record: a
    fusion may have packed the sparse weight with others (Q, K and V into Attention's);
    such a packed weight keeps the 2:4 credit only if it is still at most half dense."""
    record = get_meta(node, "sparsity")
    if not isinstance(record, dict):
        return None
    index = record.get("input")
    weight = node.inputs[index] if isinstance(index, int) and index < len(node.inputs) else None
    if weight is None or weight.const_value is None or not weight.const_value.size:
        return None  # the record came over in a fusion to a node that does not hold the weight
    density = float(np.count_nonzero(weight.const_value.numpy())) / weight.const_value.size
    if record.get("pattern") == "2:4" and profile.supports.get("sparsity_2_4") and density <= 0.5 + 1e-9:
        return 0.5, index, 0.5
    if profile.supports.get("zero_skipping"):
        return density, index, density
    return 1.0, None, 1.0


def _weight_macs(node: ir.Node, index: int | None, macs: int) -> int:
    """The part of ``node``'s MACs that multiply its weight input ``index`` (MACs): all of a
    Conv's; for a dense product, rows × weight elements — a fused Attention also multiplies
    activations (QKᵀ, AV), which sparsity of its weight does not touch."""
    if index is None or index >= len(node.inputs) or node.op_type in ("Conv", "ConvInteger", "QLinearConv"):
        return macs
    weight, data = static_shape(node.inputs[index]), static_shape(node.inputs[0])
    if not weight or not data:
        return macs
    reduction = weight[1] if node.op_type == "Gemm" and _attribute(node, "transB", 0) else weight[0]
    rows = math.prod(data) // max(1, reduction)
    return min(macs, rows * math.prod(weight))


def _attribute(node: ir.Node, name: str, default: int) -> int:
    attr = node.attributes.get(name)
    return int(attr.value) if attr is not None else default


def _estimate(
    static: ir.Model,
    original: ir.Model,
    profile: HardwareProfile,
    used_dims: dict[str, int],
    notes: list[str],
) -> CostEstimate:
    graph = static.graph
    parameters = sum(
        v.const_value.size for v in original.graph.initializers.values() if v.const_value is not None
    )
    weight_bytes = sum(
        v.const_value.nbytes for v in original.graph.initializers.values() if v.const_value is not None
    )
    constant_bytes = sum(
        _nbytes(node.outputs[0]) or 0
        for node in graph
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx") and node.outputs
    )
    weight_level = profile.memory_level_for(weight_bytes + constant_bytes)

    macs_by_dtype: dict[str, int] = {}
    by_class: dict[str, dict[str, float]] = {}
    nodes: list[NodeCost] = []
    unknown: set[str] = set()
    unshaped: set[str] = set()
    failed: set[str] = set()
    unsized = 0
    sparse_nodes = {True: 0, False: 0}  # exploited by the profile / counted dense
    total_flops = total_read = total_written = 0
    total_latency_s = total_dynamic_pj = 0.0

    def level_of(value: ir.Value, nbytes: int) -> MemoryLevel:
        return weight_level if _is_weight(value) else profile.memory_level_for(nbytes)

    for node in graph:
        label = _label(node)
        unpriced: str | None = None
        try:
            work = op_work(node)
        except ShapeUnknown:
            work = OpWork(op_class="other")
            unshaped.add(label)
            unpriced = "shape unknown"
        except Exception:  # noqa: BLE001 - one cost function's bug must not stop the estimate
            log.warning("the cost function of %s failed on node %r", label, node.name, exc_info=True)
            work = OpWork(op_class="other")
            failed.add(label)
            unpriced = "cost function failed"
        if work is None:
            unknown.add(label)
            work = OpWork(op_class="other")
            unpriced = "no cost function"
        op_class = work.op_class if work.op_class in OP_CLASSES else "other"
        compute_dtype = profile.dtype_class(work.dtype)
        sparsity = _sparsity(node, profile)
        if sparsity is not None:
            sparse_nodes[sparsity[1] is not None] += 1
            skipped = _weight_macs(node, sparsity[1], work.macs) * (1.0 - sparsity[0])
            work.macs = round(work.macs - skipped)

        bytes_read = bytes_written = 0
        memory_s = dynamic_pj = 0.0
        if work.execution == "kernel":
            first_output = _nbytes(node.outputs[0]) if node.outputs else None
            for values, is_read in ((node.inputs, True), (node.outputs, False)):
                for index, value in enumerate(values):
                    if value is None:
                        continue
                    nbytes = _nbytes(value)
                    if nbytes is None:
                        unsized += 1
                        unpriced = unpriced or "tensor sizes unknown"
                        continue
                    if is_read and index in work.partial_reads and first_output is not None:
                        nbytes = min(nbytes, first_output)
                    if is_read and sparsity is not None and index == sparsity[1] and value.dtype is not None:
                        # stored compressed: kept values plus their position bits
                        index_bits = 1.0 / value.dtype.bitwidth
                        nbytes = math.ceil(nbytes * (sparsity[2] + index_bits))
                    level = level_of(value, nbytes)
                    memory_s += nbytes / level.bandwidth_bytes_per_s
                    dynamic_pj += nbytes * level.energy_pj_per_byte
                    if is_read:
                        bytes_read += nbytes
                    else:
                        bytes_written += nbytes

        pj_per_mac = profile.energy_pj_per_mac[compute_dtype]
        compute_s = (work.macs + work.flops / 2) / profile.peak_macs_per_s[compute_dtype]
        dynamic_pj += work.macs * pj_per_mac + work.flops * pj_per_mac / 2
        for other_dtype, other_macs in work.other_macs.items():
            other_class = profile.dtype_class(other_dtype)
            compute_s += other_macs / profile.peak_macs_per_s[other_class]
            dynamic_pj += other_macs * profile.energy_pj_per_mac[other_class]
            macs_by_dtype[other_dtype] = macs_by_dtype.get(other_dtype, 0) + other_macs
        macs_by_dtype[work.dtype] = macs_by_dtype.get(work.dtype, 0) + work.macs

        if work.execution == "free":
            latency_s = 0.0
            bound = "overhead"
        else:
            latency_s = max(compute_s, memory_s) + profile.op_overhead_s
            if compute_s == 0 and memory_s == 0:
                bound = "overhead"
            else:
                bound = "compute" if compute_s >= memory_s else "memory"
        energy_mj = (dynamic_pj + profile.static_power_w * latency_s * 1e12) * _PJ_TO_MJ
        node_macs = work.macs + sum(work.other_macs.values())

        nodes.append(NodeCost(
            name=node.name or "", op_type=node.op_type, op_class=op_class, dtype=work.dtype,
            macs=node_macs, flops=work.flops, bytes_read=bytes_read, bytes_written=bytes_written,
            latency_ms=latency_s * _S_TO_MS, energy_mj=energy_mj, module=source_module(node),
            domain=node.domain, bound=bound, weight_bytes=_weight_nbytes(node), unpriced=unpriced,
        ))
        row = by_class.setdefault(op_class, {"macs": 0, "latency_ms": 0.0, "energy_mj": 0.0, "nodes": 0})
        row["macs"] += node_macs
        row["latency_ms"] += latency_s * _S_TO_MS
        row["energy_mj"] += energy_mj
        row["nodes"] += 1
        total_flops += work.flops
        total_read += bytes_read
        total_written += bytes_written
        total_latency_s += latency_s
        total_dynamic_pj += dynamic_pj

    if unshaped:
        notes.append(
            f"shapes unknown for {', '.join(sorted(unshaped))}: counted as 0 MACs; "
            "bind the dims or export with static shapes"
        )
    if failed:
        notes.append(f"the cost function of {', '.join(sorted(failed))} failed: counted as 0 MACs")
    if unsized:
        notes.append(f"{unsized} tensor(s) had no static shape or size: counted as 0 bytes")
    if sparse_nodes[True]:
        notes.append(f"{sparse_nodes[True]} sparse node(s) counted at effective MACs and compressed weight bytes")
    if sparse_nodes[False]:
        notes.append(
            f"{sparse_nodes[False]} sparse node(s) counted dense: {profile.name} exploits neither "
            "their pattern nor zeros (no latency or energy gain unless measured)"
        )
    if unknown:
        notes.append(f"no cost function for {', '.join(sorted(unknown))}: counted as 0 MACs")

    return CostEstimate(
        profile=profile.name,
        dims=used_dims,
        macs_by_dtype={d: m for d, m in sorted(macs_by_dtype.items(), key=_dtype_order) if m},
        flops=total_flops,
        bytes_read=total_read,
        bytes_written=total_written,
        latency_ms=total_latency_s * _S_TO_MS,
        dynamic_energy_mj=total_dynamic_pj * _PJ_TO_MJ,
        static_energy_mj=profile.static_power_w * total_latency_s * 1e12 * _PJ_TO_MJ,
        by_op_class=by_class,
        nodes=nodes,
        parameters=parameters,
        weight_bytes=weight_bytes,
        unknown_ops=sorted(unknown),
        method=f"model:cost({profile.name})",
        calibrated=profile.calibrated,
        notes=notes,
    )
