"""The lines that list the nodes a cost estimate could not price (no static shape, no cost
function): ``inspect`` and the ledger print them so a 0-MAC node never passes silently."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

# The ledger and inspect name this many unpriced nodes, then count the rest.
UNPRICED_SHOWN = 8


def unpriced_lines(nodes: Sequence[Mapping[str, Any]], total_nodes: int, *, indent: str = "  ") -> list[str]:
    """A heading with the count and the weight share (% of the model's weight bytes) of
    ``nodes`` (``CostEstimate.unpriced_nodes()`` dicts), then one line per node, at most
    :data:`UNPRICED_SHOWN`; no lines when ``nodes`` is empty."""
    if not nodes:
        return []
    share = sum(n["weight_share"] for n in nodes)
    lines = [f"not priced: {len(nodes)} of {total_nodes} nodes, {share:.1%} of the weights, counted as 0 MACs "
             "or 0 bytes (bind the dims with --dim, or export with static shapes):"]
    for node in nodes[:UNPRICED_SHOWN]:
        lines.append(f"{indent}{node['op_type']:<28} {node['name'] or '(unnamed)'}: {node['reason']}, "
                     f"{node['weight_share']:.1%} of the weights")
    if len(nodes) > UNPRICED_SHOWN:
        lines.append(f"{indent}... and {len(nodes) - UNPRICED_SHOWN} more (--json lists them all)")
    return lines
