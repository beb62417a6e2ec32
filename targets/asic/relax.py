"""The accelerator inside a TVM Relax module: each ``greencc.asic::AsicCall`` node of the
ONNX graph becomes ``R.call_dps_packed("greencc.asic.call", [call_id, inputs...])``, a
packed function that runs the call in the simulator of the running model (a per-thread
``AcceleratorSession``); everything else is imported and compiled for the host by TVM.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from greencc.errors import GreenccError
from greencc.targets.asic.graph import CALL_OP, AsicCall
from greencc.targets.asic.sim import Epilogue, SystolicSimulator
from greencc.targets.tvm.onnx_import import _importer_class, import_proto

PACKED_FUNC = "greencc.asic.call"
_local = threading.local()


@dataclass
class AcceleratorSession:
    """What the packed function needs while a model runs: its calls by id, the simulator
    (which keeps the counters) and, with ``trace``, every call's inputs and outputs."""

    calls: Mapping[int, AsicCall]
    simulator: SystolicSimulator
    trace: bool = False
    records: list[tuple[AsicCall, dict[str, np.ndarray], list[np.ndarray]]] = field(default_factory=list)
    # A failed call's error: TVM re-raises its own, this keeps greencc's (node, op, cause).
    error: GreenccError | None = None


@contextlib.contextmanager
def active(session: AcceleratorSession) -> Iterator[AcceleratorSession]:
    """Make ``session`` the one this thread's accelerator calls run in."""
    previous = getattr(_local, "session", None)
    _local.session = session
    try:
        yield session
    finally:
        _local.session = previous


def run_call(call: AsicCall, args: Mapping[str, np.ndarray], simulator: SystolicSimulator) -> list[np.ndarray]:
    """Run one accelerator call on numpy inputs (role -> array); returns its outputs."""
    kind, attrs = call.kind, call.attrs
    if kind in ("quantize", "dequantize"):
        x = args["x"]
        zp = args.get("zp", np.zeros((), np.uint8))
        fn = simulator.quantize if kind == "quantize" else simulator.dequantize
        return [fn(x, args["scale"], zp, int(attrs.get("axis", 1)), node=call.node)]
    if kind == "dynamic_quantize":
        return list(simulator.dynamic_quantize(args["x"], node=call.node))
    epilogue = _epilogue(call, args)
    a, w = args["a"], args["w"]
    a_zp = args.get("a_zp", np.zeros((), a.dtype))
    w_zp = args.get("w_zp", np.zeros((), w.dtype))
    if kind == "conv":
        return [simulator.conv2d(a, a_zp, w, w_zp, epilogue, node=call.node, pads=tuple(attrs["pads"]),
                                 strides=tuple(attrs["strides"]), dilations=tuple(attrs["dilations"]))]
    if attrs.get("trans_b"):
        w = w.T
    lead = a.shape[:-1]
    out = simulator.gemm(a.reshape(-1, a.shape[-1]), a_zp, np.ascontiguousarray(w), w_zp, epilogue, node=call.node)
    return [out.reshape(*lead, out.shape[-1])]


def _epilogue(call: AsicCall, args: Mapping[str, np.ndarray]) -> Epilogue:
    out = call.attrs.get("out", "int32")
    if out == "int32":
        return Epilogue()
    multiplier = (np.asarray(args["a_scale"], np.float32) * np.asarray(args["w_scale"], np.float32)).astype(np.float32)
    bias = args.get("bias")
    return Epilogue(out, multiplier.reshape(-1), None if bias is None else np.asarray(bias, np.float32).reshape(-1),
                    bool(call.attrs.get("relu")), args.get("y_scale"), args.get("y_zp"))


def _packed_call(*tensors: Any) -> None:
    session: AcceleratorSession | None = getattr(_local, "session", None)
    call_id = int(np.from_dlpack(tensors[0]))
    if session is None:
        raise GreenccError("an asic-int8 accelerator call ran outside a compiled model's run",
                           hint="run the model through its greencc CompiledModel")
    call = session.calls[call_id]
    n_in = len(call.inputs)
    ins, outs = tensors[1:1 + n_in], tensors[1 + n_in:]
    args = {role: np.from_dlpack(t).copy() for role, t in zip(call.inputs, ins, strict=True)}
    try:
        results = run_call(call, args, session.simulator)
    except Exception as exc:
        session.error = GreenccError(f"the accelerator call for node '{call.node}' (op '{call.op}') failed: "
                                     f"{type(exc).__name__}: {exc}", hint="please report it with the model")
        raise session.error from None
    for tensor, value in zip(outs, results, strict=True):
        value = np.asarray(value)
        tensor.copyfrom(value if value.flags.c_contiguous else value.copy())  # keeps 0-d arrays 0-d
    if session.trace:
        session.records.append((call, args, [np.array(r) for r in results]))


def register_packed_function() -> None:
    """Register ``greencc.asic.call`` with TVM (idempotent)."""
    import tvm

    tvm.register_global_func(PACKED_FUNC, _packed_call, override=True)


def output_types(call: AsicCall, shapes: Mapping[str, tuple[int, ...]], dtypes: Mapping[str, str]) -> list[tuple[tuple[int, ...], str]]:
    """(shape, dtype) of each output of ``call``, from its inputs' shapes and dtypes."""
    kind, attrs = call.kind, call.attrs
    if kind == "quantize":
        zp = call.inputs.get("zp")
        return [(shapes[call.inputs["x"]], dtypes[zp] if zp else "uint8")]
    if kind == "dequantize":
        return [(shapes[call.inputs["x"]], "float32")]
    if kind == "dynamic_quantize":
        return [(shapes[call.inputs["x"]], "uint8"), ((), "float32"), ((), "uint8")]
    out = attrs.get("out", "int32")
    dtype = {"int32": "int32", "float": "float32"}.get(out) or dtypes[call.inputs["y_zp"]]
    a, w = shapes[call.inputs["a"]], shapes[call.inputs["w"]]
    if kind == "conv":
        top, left, bottom, right = attrs["pads"]
        (sh, sw), (dh, dw) = attrs["strides"], attrs["dilations"]
        oh = (a[2] + top + bottom - dh * (w[2] - 1) - 1) // sh + 1
        ow = (a[3] + left + right - dw * (w[3] - 1) - 1) // sw + 1
        return [((a[0], w[0], oh, ow), dtype)]
    n = w[0] if attrs.get("trans_b") else w[1]
    return [((*a[:-1], n), dtype)]


def importer_class(calls: Mapping[int, AsicCall]) -> type:
    """TVM's ONNX importer that also converts ``AsicCall`` nodes into packed calls, with
    each converter failure tagged by its node (as ``tvm_import`` does)."""
    from tvm import relax


    base = _importer_class()

    class AsicImporter(base):  # type: ignore[misc, valid-type]
        def _check_for_unsupported_ops(self, graph: Any) -> None:
            import onnx

            others = onnx.GraphProto()
            others.node.extend(n for n in graph.node if n.op_type != CALL_OP)
            super()._check_for_unsupported_ops(others)

        def _convert_operator(self, op_name: str, inputs: Any, attrs: Any, opset: int) -> Any:
            if op_name != CALL_OP:
                return super()._convert_operator(op_name, inputs, attrs, opset)
            call = calls[int(attrs["call_id"])]
            shapes, dtypes = {}, {}
            for name, expr in zip(call.inputs.values(), inputs, strict=True):
                info = expr.ty
                shapes[name] = tuple(int(d) for d in info.shape)
                dtypes[name] = str(info.dtype)
            types = [relax.TensorType(list(shape), dtype) for shape, dtype in output_types(call, shapes, dtypes)]
            args = [relax.const(np.int64(call.call_id)), *inputs]
            return self.bb.emit(relax.call_dps_packed(PACKED_FUNC, args, types if len(types) > 1 else types[0]))

    return AsicImporter


def to_relax(proto: Any, calls: Mapping[int, AsicCall]) -> Any:
    """Import an accelerator proto (``asic_graph.accelerator_proto``) into a Relax module."""

    return import_proto(proto, importer_class(calls), where=" for the host CPU",
                        hint="rewrite the node with a pass, or compile for ort-cpu, which runs it")


__all__ = ["AcceleratorSession", "PACKED_FUNC", "active", "importer_class", "output_types",
           "register_packed_function", "run_call", "to_relax"]
