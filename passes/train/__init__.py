"""Training passes: ``recover`` distills a pruned or sparsified model back towards the
pipeline's input through its PyTorch lowering. Importing this package registers it
(torch loads only when the pass runs).
"""

from . import recover  # noqa: F401
