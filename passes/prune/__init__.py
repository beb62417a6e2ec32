"""Structural compression passes: label-free attention-head pruning, FFN-neuron and CNN
channel pruning, and unstructured / 2:4 / block sparsity. Importing this package
registers them.
"""

from . import prune_channels, prune_ffn, prune_heads, sparsify  # noqa: F401
