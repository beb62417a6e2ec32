"""The cost model: per-op work (ops.py), hardware profiles (profile.py) and the per-node
roofline latency and energy estimate (estimate.py)."""

from greencc.cost.estimate import CostEstimate, NodeCost, estimate_cost
from greencc.cost.ops import OpWork, register_op_cost
from greencc.cost.profile import HardwareProfile, MemoryLevel

__all__ = [
    "CostEstimate", "NodeCost", "estimate_cost", "OpWork", "register_op_cost",
    "HardwareProfile", "MemoryLevel",
]
