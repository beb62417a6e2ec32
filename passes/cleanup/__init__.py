"""Cleanup passes: dead code, constant folding, CSE, identity removal, shape simplification.

Importing this package registers ``dce``, ``fold-constants``, ``cse``, ``remove-identity``,
``simplify-shapes`` and the ``cleanup`` group that runs them in order.
"""

from . import (  # noqa: F401
    cse,
    dce,
    fold_constants,
    group,
    remove_identity,
    simplify_shapes,
)
