"""ONNX's backend test suite, materialized with the ``onnx`` package's own loader: the node
tests are generated in-process from ``onnx.backend.test.case.node``, the pytorch-converted,
pytorch-operator and simple tests are read from the data folders the wheel ships; the real
tests are only a URL each (downloading them is out of reach offline), so they are listed
but cannot be materialized.
"""

from __future__ import annotations

import dataclasses
import functools
import glob
import os
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper
from onnx.backend.test import loader

KINDS = ("node", "pytorch-converted", "pytorch-operator", "simple", "real")

# A feed or an expected output: a tensor, a sequence of tensors, or None (an empty optional).
Value = Any


@dataclasses.dataclass
class DataSet:
    """One test data set: the graph inputs (in graph-input order) and the expected outputs."""

    inputs: list[Value]
    outputs: list[Value]


@dataclasses.dataclass
class ConformanceCase:
    """One backend test: its name and kind, the model (None when it needs a download), its
    data sets and the test's own tolerances."""

    name: str
    kind: str
    model: onnx.ModelProto | None
    data_sets: list[DataSet]
    rtol: float
    atol: float

    @property
    def materialized(self) -> bool:
        """Whether the model and at least one data set are here."""
        return self.model is not None and bool(self.data_sets)


def load_cases(kinds: Sequence[str] = KINDS) -> list[ConformanceCase]:
    """Every backend test of ``kinds``, sorted by (kind, name)."""
    cases: list[ConformanceCase] = []
    for kind in kinds:
        cases.extend(_cases_by_kind(kind))
    return sorted(cases, key=lambda c: (c.kind, c.name))


def find_case(name: str, kind: str = "node") -> ConformanceCase:
    """The backend test ``name`` of ``kind`` (KeyError when there is none)."""
    for case in _cases_by_kind(kind):
        if case.name == name:
            return case
    raise KeyError(f"no {kind} backend test named {name}")


@functools.cache
def _cases_by_kind(kind: str) -> tuple[ConformanceCase, ...]:
    # onnx generates the node tests once per process (its collector keeps global state),
    # so every caller shares one materialization.
    return tuple(_cases_of(kind))


def _cases_of(kind: str) -> Iterator[ConformanceCase]:
    for test in loader.load_model_tests(kind=kind):
        if test.model is not None:
            data_sets = [
                DataSet([_normalize(v) for v in ins], [_normalize(v) for v in outs])
                for ins, outs in (test.data_sets or [])
            ]
            yield ConformanceCase(test.name, kind, test.model, data_sets, test.rtol, test.atol)
        elif test.model_dir is not None:
            model = onnx.load(os.path.join(test.model_dir, "model.onnx"))
            yield ConformanceCase(test.name, kind, model, _read_data_sets(test.model_dir, model), test.rtol, test.atol)
        else:
            yield ConformanceCase(test.name, kind, None, [], test.rtol, test.atol)


def _normalize(value: Value) -> Value:
    return numpy_helper.to_array(value) if isinstance(value, onnx.TensorProto) else value


def _read_data_sets(model_dir: str, model: onnx.ModelProto) -> list[DataSet]:
    initializers = {t.name for t in model.graph.initializer}
    inputs = [v for v in model.graph.input if v.name not in initializers]
    data_sets = []
    for folder in sorted(glob.glob(os.path.join(model_dir, "test_data_set*"))):
        count_in = len(glob.glob(os.path.join(folder, "input_*.pb")))
        count_out = len(glob.glob(os.path.join(folder, "output_*.pb")))
        data_sets.append(DataSet(
            [_read_value(os.path.join(folder, f"input_{i}.pb"), inputs[i].type) for i in range(count_in)],
            [_read_value(os.path.join(folder, f"output_{i}.pb"), model.graph.output[i].type)
             for i in range(count_out)],
        ))
    return data_sets


def _read_value(path: str, type_proto: onnx.TypeProto) -> Value:
    with open(path, "rb") as f:
        content = f.read()
    if type_proto.HasField("sequence_type"):
        sequence = onnx.SequenceProto()
        sequence.ParseFromString(content)
        return numpy_helper.to_list(sequence)
    if type_proto.HasField("optional_type"):
        optional = onnx.OptionalProto()
        optional.ParseFromString(content)
        return numpy_helper.to_optional(optional)
    tensor = onnx.TensorProto()
    tensor.ParseFromString(content)
    return np.asarray(numpy_helper.to_array(tensor))
