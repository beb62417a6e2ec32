"""The ONNX frontend: ``greencc.load(path | bytes | ModelProto)``."""

from __future__ import annotations

import os

import onnx

from greencc.ir.io import load_model
from greencc.model import Model, Provenance


def load(source: str | os.PathLike | bytes | onnx.ModelProto) -> Model:
    """Load an ONNX model as a validated, topologically sorted greencc ``Model``.

    Raises ``ModelLoadError`` / ``UnsupportedOpError`` with the cause and the fix; the
    input file is only read, never modified.
    """
    ir_model = load_model(source)
    if isinstance(source, (str, os.PathLike)):
        origin = f"onnx:{os.fspath(source)}"
    else:
        origin = f"onnx:<{type(source).__name__}>"
    return Model(ir_model, Provenance(source=origin, exporter=None))
