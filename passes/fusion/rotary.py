"""Rotary position embeddings (RoPE) written with primitive ops, as the dynamo exports of
Llama-family and Phi decoders do, into ONNX Runtime's ``RotaryEmbedding``.

    x·cos + rotate_half(x)·sin                  -> com.microsoft::RotaryEmbedding(x, position_ids, cos_cache, sin_cache)
    Concat(rope(Slice(x, 0, r)), Slice(x, r, ∞)) -> the same with rotary_embedding_dim=r (partial rotary, Phi)

cos and sin must be cos/sin(position_ids · inv_freq) (times a constant attention scaling)
of a constant ``inv_freq``; the fused op reads them from caches of the model's
``max_positions`` rows, computed here.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from greencc.model import DecoderSpec
from greencc.passes.lib.graph_edits import constant_array
from greencc.passes.lib.matching import (
    CONTRIB_DOMAIN,
    FusionRun,
    label,
    other_readers,
    single_reader,
)
from greencc.passes.lib.rules import Either, Match, Op, Rule, Var, match_pattern
from greencc.pipeline.base import register_pass

ROTARY_EMBEDDING = f"{CONTRIB_DOMAIN}::RotaryEmbedding"
# A Slice end at or past the axis length means "to the end"; exporters write INT64_MAX.
_TO_END = 1 << 62

# rotate_half(x) = Concat(−x[..., h:], x[..., :h]); the upper half is matched first so that
# ``x`` is bound before the commuted x·cos product is tried.
ROPE = Op(
    "Add",
    Op("Mul",
       Op("Concat", Op("Neg", Op("Slice", Var("x"), more_inputs=True, name="upper")),
          Op("Slice", Var("x"), more_inputs=True, name="lower"), name="rotated"),
       Var("sin4", const=False), commute=True, name="rot_sin"),
    Op("Mul", Var("x"), Var("cos4", const=False), commute=True, name="x_cos"),
    commute=True, name="rope",
)


def _table(trig: str) -> Op:
    """Unsqueeze(trig(Concat(f, f)) [· scaling], 1): the cos or sin table a rope multiplies by."""
    wave = Op(trig, Op("Concat", Var("freqs"), Var("freqs"), name="emb"), name="trig")
    return Op("Unsqueeze",
              Either(Op("Mul", wave, Var("scaling", const=True), commute=True, name="scaled"), wave),
              Var("axes", const=True), name="table")


COS_TABLE, SIN_TABLE = _table("Cos"), _table("Sin")
# f = position_ids[..., None] · inv_freq, the float cast before or after the Unsqueeze.
FREQS = Op(
    "Mul",
    Either(Op("Cast", Op("Unsqueeze", Var("position_ids", const=False), Var("pos_axes", const=True))),
           Op("Unsqueeze", Op("Cast", Var("position_ids", const=False)), Var("pos_axes", const=True))),
    Var("inv_freq", const=True), commute=True, name="freqs",
)


def _slice_bounds(node: ir.Node, rank: int | None) -> tuple[int, int] | None:
    """(start, end) of a Slice over the last axis with step 1, else ``None``."""
    arrays = [constant_array(v) if v is not None else None for v in node.inputs[1:]]
    if len(arrays) < 3 or any(a is None or np.asarray(a).size != 1 for a in arrays[:3]):
        return None
    start, end, axis = (int(np.asarray(a).reshape(-1)[0]) for a in arrays[:3])
    step = 1 if len(arrays) < 4 or arrays[3] is None else int(np.asarray(arrays[3]).reshape(-1)[0])
    last = axis == -1 or (rank is not None and axis == rank - 1)
    return (start, end) if last and step == 1 else None


def rotary_caches(inv_freq: np.ndarray, scaling: float, positions: int) -> tuple[np.ndarray, np.ndarray]:
    """cos and sin of position·inv_freq (times ``scaling``) for positions 0..positions−1,
    shape [positions, len(inv_freq)], float32 products as the model computes them."""
    angles = np.arange(positions, dtype=np.float32)[:, None] * inv_freq.astype(np.float32)[None, :]
    return ((np.cos(angles.astype(np.float64)) * scaling).astype(np.float32),
            (np.sin(angles.astype(np.float64)) * scaling).astype(np.float32))


def rope_tables(m: Match) -> str:
    """Check that the rope's cos/sin come from one ``position_ids · inv_freq``; store
    ``position_ids``, ``inv_freq`` and ``scaling`` in ``m``. Returns why not, or ``""``."""
    found = {}
    for name, table in (("cos4", COS_TABLE), ("sin4", SIN_TABLE)):
        producer = m[name].producer()
        bound = match_pattern(table, producer) if producer is not None else None
        if bound is None:
            return f"the {name[:3]} factor '{m[name].name}' is not Unsqueeze({name[:3].capitalize()}(Concat(f, f)))"
        axes = constant_array(bound["axes"])
        if axes is None or [int(a) for a in np.asarray(axes).reshape(-1)] != [1]:
            return f"the {name[:3]} table {label(bound.node('table'))} does not insert the head axis (1)"
        found[name] = bound
    cos, sin = found["cos4"], found["sin4"]
    if cos["freqs"] is not sin["freqs"]:
        return "cos and sin are taken of different angles"
    freqs = match_pattern(FREQS, cos["freqs"].producer()) if cos["freqs"].producer() is not None else None
    if freqs is None:
        return f"the angles '{cos['freqs'].name}' are not position_ids · inv_freq of a constant inv_freq"
    scalings = [constant_array(t["scaling"]) if "scaling" in t.values else None for t in (cos, sin)]
    values = [1.0 if s is None else np.asarray(s).reshape(-1) for s in scalings]
    if any(np.size(v) != 1 for v in values) or float(np.asarray(values[0]).reshape(-1)[0]) != float(
            np.asarray(values[1]).reshape(-1)[0]):
        return "cos and sin are scaled differently"
    m["position_ids"] = freqs["position_ids"]
    m["inv_freq"] = np.asarray(constant_array(freqs["inv_freq"])).reshape(-1)
    m["scaling"] = float(np.asarray(values[0]).reshape(-1)[0])
    return ""


def rope_geometry(m: Match, run: FusionRun) -> str:
    """Check the halves of rotate_half and find partial rotary; store ``input``, ``result``
    (the value the fused op replaces), ``rotary_dim`` and ``extra_nodes``. Returns why not."""
    x = m["x"]
    shape = run.shape(x)
    rank = None if shape is None else len(shape)
    width = shape[-1] if shape is not None and isinstance(shape[-1], int) else None
    if rank != 4 or width is None:
        return f"the rotated tensor '{x.name}' is not [batch, heads, seq, head_size] with a known head size"
    half = width // 2
    upper, lower = _slice_bounds(m.node("upper"), rank), _slice_bounds(m.node("lower"), rank)
    if upper is None or lower is None or lower != (0, half) or upper[0] != half or upper[1] < width:
        return (f"the halves {label(m.node('lower'))} and {label(m.node('upper'))} are not "
                f"x[..., :{half}] and x[..., {half}:] (interleaved rotary is not fused)")
    concat = m.node("rotated")
    if concat.attributes.get("axis") is None or concat.attributes["axis"].as_int() not in (-1, 3):
        return f"{label(concat)} does not join the halves on the last axis"
    if m["inv_freq"].size != half:
        return f"inv_freq has {m['inv_freq'].size} frequencies for a rotary width of {width}"
    m["input"], m["result"], m["rotary_dim"], m["extra_nodes"] = x, m.output, width, []
    source = x.producer()
    reader = single_reader(m.output)
    if source is not None and source.op_type == "Slice" and reader is not None and reader.op_type == "Concat":
        full = source.inputs[0]
        kept = reader.inputs[1] if len(reader.inputs) == 2 and reader.inputs[0] is m.output else None
        kept_slice = kept.producer() if kept is not None else None
        full_shape = run.shape(full)
        if (kept_slice is not None and kept_slice.op_type == "Slice" and kept_slice.inputs[0] is full
                and _slice_bounds(source, 4) == (0, width) and full_shape is not None
                and isinstance(full_shape[-1], int) and _slice_bounds(kept_slice, 4) is not None
                and _slice_bounds(kept_slice, 4)[0] == width and _slice_bounds(kept_slice, 4)[1] >= full_shape[-1]
                and reader.attributes["axis"].as_int() in (-1, 3)):
            m["input"], m["result"], m["extra_nodes"] = full, reader.outputs[0], [source, kept_slice, reader]
    return ""


@register_pass("fuse-rotary")
class FuseRotary(Rule):
    """x·cos + rotate_half(x)·sin -> com.microsoft::RotaryEmbedding(x, position_ids, cos_cache, sin_cache).

    rotate_half is Concat(−x[..., h:], x[..., :h]) (non-interleaved); x is [batch, heads,
    seq, head_size]. Partial rotary (Phi: only the first r features rotate, the rest are
    concatenated back) becomes rotary_embedding_dim=r on the whole head. The caches hold
    cos/sin(p · inv_freq) for p < the model's ``max_positions`` (``greencc.decoder``
    metadata). Declines when cos/sin are not of that form, the model's maximum position is
    unknown, an intermediate is read elsewhere or the target lacks the op.
    """

    pattern = ROPE

    def check(self, m: Match, run: FusionRun) -> str:
        why = rope_tables(m) or rope_geometry(m, run)
        if why:
            return why
        for node in m.nodes[1:]:
            why = other_readers(node.outputs[0], m.nodes)
            if why:
                return why
        spec = DecoderSpec.of(run.model)
        if spec is None or not spec.max_positions:
            return "the model's maximum position is unknown (no greencc.decoder metadata), so no cos/sin cache can be built"
        m["positions"] = spec.max_positions
        return run.unsupported_reason(ROTARY_EMBEDDING)

    def rewrite(self, m: Match, run: FusionRun) -> None:
        fused, caches = rotary_node(m, run, m["input"], anchor=m.root)
        run.fused_away([m[name] for name in ("rotated", "rot_sin", "x_cos")])
        result = m["result"]
        before = result.producer()
        assert before is not None
        run.replace(result, fused, fused.outputs[0], [*m.nodes, *m["extra_nodes"]], before=before)


def rotary_node(m: Match, run: FusionRun, x: ir.Value, *, anchor: ir.Node, num_heads: int | None = None) -> tuple[ir.Node, tuple[ir.Value, ir.Value]]:
    """A RotaryEmbedding node rotating ``x`` as the site ``m`` does (caches made once per
    inv_freq, scaling and length); 3-D inputs need ``num_heads``."""
    graph = anchor.graph
    assert graph is not None
    cos, sin = rotary_caches(m["inv_freq"], m["scaling"], m["positions"])
    cos_value, sin_value = shared_initializer(run, graph, "rotary_cos_cache", cos), shared_initializer(
        run, graph, "rotary_sin_cache", sin)
    attributes: dict[str, int] = {"interleaved": 0}
    width = run.shape(x)[-1] if num_heads is None else None
    if num_heads is not None:
        attributes["num_heads"] = num_heads
        attributes["rotary_embedding_dim"] = m["rotary_dim"]
    elif m["rotary_dim"] != width:
        heads = run.shape(x)[1]
        attributes["num_heads"] = int(heads) if isinstance(heads, int) else 0
        attributes["rotary_embedding_dim"] = m["rotary_dim"]
    node = run.new_node("RotaryEmbedding", [x, m["position_ids"], cos_value, sin_value], attributes,
                        anchor=anchor, domain=CONTRIB_DOMAIN, output_names=["rotary_out"])
    return node, (cos_value, sin_value)


def shared_initializer(run: FusionRun, graph: ir.Graph, base: str, data: np.ndarray) -> ir.Value:
    """An initializer holding ``data``: an existing one with the same base name and bytes,
    else a new one (every layer of a decoder shares one cos and one sin cache)."""
    for name, value in graph.initializers.items():
        if name.startswith(base) and value.const_value is not None:
            existing = value.const_value.numpy()
            if existing.shape == data.shape and existing.dtype == data.dtype and np.array_equal(existing, data):
                return value
    return run.initializer(graph, base, data)
