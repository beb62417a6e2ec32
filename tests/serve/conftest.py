"""Artifacts the serving tests share: one small encoder (a dynamic batch dim) compiled at
-O0 (``fp32``) and -O1 (``o1``: cleanup removes two nodes, so its estimate is lower), built
once per test session."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx.parser
import pytest

import greencc as gc

WIDTH = 32


def encoder_text(width: int = WIDTH, seed: int = 0) -> str:
    """``y = Relu(Identity(x) * 1 @ w)`` with x float[batch, width]."""
    weights = np.random.default_rng(seed).standard_normal(width * width)
    values = ", ".join(f"{v:.4f}" for v in weights)
    return f"""<ir_version: 10, opset_import: ["" : 17]>
g (float[batch, {width}] x) => (float[batch, {width}] y) <float[{width}, {width}] w = {{{values}}}, float one = {{1.0}}> {{
  i = Identity(x)
  m = Mul(i, one)
  a = MatMul(m, w)
  y = Relu(a)
}}"""


@pytest.fixture(scope="session")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("serve-artifacts")
    paths = {}
    for name, pipeline in (("fp32", "-O0"), ("o1", "-O1")):
        model = gc.load(onnx.parser.parse_model(encoder_text()))
        compiled = gc.compile(model, pipeline=pipeline, dims={"batch": 1}, threads=1)
        paths[name] = compiled.save(root / name)
    return paths
