"""The ``cleanup`` pass group: the exact simplifications every pipeline starts with."""

from __future__ import annotations

from greencc.pipeline.base import register_pass
from greencc.pipeline.group import PassGroup


@register_pass("cleanup")
class Cleanup(PassGroup):
    """Shape simplification, constant folding, identity removal, CSE and dead-code removal.

    Rewrites: those of its members, in this order:
      simplify-shapes  Shape/Gather/Concat on static dims -> constants
      fold-constants   Op(constants) -> initializer
      remove-identity  Identity, Cast to the same dtype, Mul by 1, ... -> their input
      cse              duplicate nodes and initializers -> one
      dce              unused nodes, initializers, functions, opsets -> (removed)

    Shapes go first because they turn Reshape targets into constants, which lets
    remove-identity prove a Reshape keeps its input's shape; folding precedes identity
    removal so that a neutral constant computed by the graph (``Mul(x, Div(c, c))``) is
    seen as one; CSE then merges what folding and bypassing made equal, and dce removes
    everything they left unused.
    """

    lossy = False
    members = "simplify-shapes,fold-constants,remove-identity,cse,dce"
