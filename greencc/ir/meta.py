"""Per-node greencc metadata and provenance that survives rewrites.

Persistent facts live in ``node.metadata_props`` (strings, saved with the model) under the
``greencc.`` prefix; transient analysis results live in ``node.meta`` (in memory only).
"""

from __future__ import annotations

import ast
import json
import logging
from collections.abc import Iterable
from typing import Any

import onnx_ir as ir

log = logging.getLogger(__name__)

PREFIX = "greencc."
REPLACED_KEY = "greencc.replaced"
# The torch dynamo exporter's keys, kept as provenance.
TORCH_SCOPES_KEY = "pkg.torch.onnx.name_scopes"
TORCH_STACK_KEY = "pkg.torch.onnx.stack_trace"
TORCH_NAMESPACE_KEY = "namespace"


def set_meta(node: ir.Node, key: str, value: Any) -> None:
    """Store a JSON-serialisable greencc fact on ``node`` (saved with the model).

    Raises ``TypeError`` when ``value`` is not JSON-serialisable.
    """
    node.metadata_props[PREFIX + key] = json.dumps(value, sort_keys=True)


def get_meta(node: ir.Node, key: str, default: Any = None) -> Any:
    """Read a greencc fact stored by :func:`set_meta`, or ``default`` when absent or unreadable.

    Metadata comes from model files, which are untrusted: a value that is not valid JSON
    is logged and treated as absent.
    """
    raw = node.metadata_props.get(PREFIX + key)
    if raw is None:
        return default
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        log.warning("ignoring unreadable greencc metadata %r on node %r", PREFIX + key, node.name)
        return default


def source_module(node: ir.Node) -> str | None:
    """The torch module path a node came from (``encoder.layer.3.attention``), if known.

    Read from the dynamo exporter's name scopes, else from a legacy exporter's node name
    (``/encoder/layer.3/attention/MatMul``). ``None`` for nodes of the root module or of
    unknown origin.
    """
    scopes = node.metadata_props.get(TORCH_SCOPES_KEY)
    if scopes:
        try:
            parsed = ast.literal_eval(scopes)  # a Python list literal, never evaluated code
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            parsed = None
        if isinstance(parsed, (list, tuple)):
            parts = [p for p in parsed if isinstance(p, str) and p]
            # The last scope is the aten op itself; the one before it is the innermost module.
            return parts[-2] if len(parts) >= 2 else None
    name = node.name or ""
    if name.startswith("/") and TORCH_NAMESPACE_KEY not in node.metadata_props:
        parts = [p for p in name.split("/") if p]
        if len(parts) >= 2:
            return ".".join(parts[:-1])
    return None


def inherit_provenance(new_node: ir.Node, replaced: Iterable[ir.Node]) -> None:
    """Copy the metadata of ``replaced`` nodes onto ``new_node`` and list their names.

    Keys ``new_node`` already has are kept; otherwise the first replaced node holding a key
    donates it (so torch stack traces and scopes carry over). The names of every replaced
    node, and of the nodes they had replaced in turn, accumulate under
    ``greencc.replaced`` so reports can trace a fused node back to the original graph.
    ``new_node`` may be one of ``replaced`` (a node rewritten in place absorbing others).
    """
    replaced = [old for old in replaced if old is not new_node]
    names: list[str] = _replaced_names(new_node) if REPLACED_KEY in new_node.metadata_props else []
    for old in replaced:
        for name in _replaced_names(old) if REPLACED_KEY in old.metadata_props else [old.name or old.op_type]:
            if name not in names:
                names.append(name)
    for old in replaced:
        for key, value in old.metadata_props.items():
            if key != REPLACED_KEY:
                new_node.metadata_props.setdefault(key, value)
    if names:
        new_node.metadata_props[REPLACED_KEY] = json.dumps(names)


def _replaced_names(node: ir.Node) -> list[str]:
    """The names a node records under ``greencc.replaced`` (itself when it has none)."""
    try:
        names = json.loads(node.metadata_props[REPLACED_KEY])
    except (KeyError, json.JSONDecodeError):
        return [node.name or node.op_type]
    if not isinstance(names, list):
        return [node.name or node.op_type]
    return [str(n) for n in names]
