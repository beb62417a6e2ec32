"""``ort-cpu``: ONNX Runtime's CPU execution provider, the default target that runs anywhere
and the fallback for nodes other targets leave unclaimed.

It claims the ONNX-domain ops ONNX Runtime has a CPU kernel (or a function body) for at
the model's opset, and the contrib ops (``com.microsoft``) it has CPU kernels for, read
from the installed onnxruntime itself so the list never goes stale.
"""

from __future__ import annotations

import functools
import os
import platform
import re
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from greencc.errors import (
    GreenccError,
    InputMismatchError,
    ModelLoadError,
    UnsupportedOpError,
    UsageError,
)
from greencc.frontend.onnx_file import load
from greencc.ir.io import iter_tensor_protos, save_model, weights_nbytes
from greencc.ir.traversal import node_label
from greencc.model import DecoderSpec
from greencc.target import (
    UNSUPPORTED,
    Availability,
    CompiledModel,
    Partition,
    Target,
    group_partitions,
    node_id,
    register_target,
)
from greencc.target.generation import DecodeSession
from greencc.targets.ort.kernel_choice import refusing_optimizers, slower_fused_kernels

if TYPE_CHECKING:
    import onnx_ir as ir

    from greencc.model import Model
    from greencc.pipeline.context import PassContext

MODEL_FILE = "model.onnx"
DATA_FILE = f"{MODEL_FILE}.data"
# Above this many bytes of weights the session is built from a file (with external data)
# rather than from serialized bytes, which protobuf caps at 2 GiB.
INLINE_WEIGHTS_LIMIT_BYTES = 3 << 29  # 1.5 GiB
# An artifact with more weight bytes than this keeps them in model.onnx.data: loading it then
# parses only the graph (the IR reads a weight when asked) and onnxruntime reads the file.
# An 8-layer, 227 MB float32 decoder took 720 MB resident loaded from one file, 320 MB from two.
ARTIFACT_EXTERNAL_DATA_BYTES = 64 << 20

OPTIMIZATION_LEVELS = ("all", "extended", "basic", "disabled")

_ONNX_DOMAINS = {"": "", "ai.onnx": "", "ai.onnx.ml": "ai.onnx.ml"}

# Used only when onnxruntime exposes neither its kernel table nor its schemas: contrib
# ops with CPU kernels in every onnxruntime release greencc supports (>= 1.22).
_CONTRIB_CPU_OPS_FALLBACK = frozenset(
    ("com.microsoft", op)
    for op in (
        "Attention", "BiasGelu", "DequantizeLinear", "DynamicQuantizeMatMul",
        "EmbedLayerNormalization", "FastGelu", "FusedConv", "FusedGemm", "FusedMatMul",
        "Gelu", "GroupQueryAttention", "MatMulIntegerToFloat", "MatMulNBits",
        "MultiHeadAttention", "QAttention", "QGemm", "QLinearAdd", "QLinearAveragePool",
        "QLinearConcat", "QLinearConv", "QLinearGlobalAveragePool", "QLinearLeakyRelu",
        "QLinearMul", "QLinearSigmoid", "QLinearSoftmax", "QuantizeLinear", "QuickGelu",
        "RotaryEmbedding", "SkipLayerNormalization", "SkipSimplifiedLayerNormalization",
    )
)


# Fused ops onnxruntime registers in the ONNX domain although ONNX does not define them.
_ORT_ONNX_DOMAIN_OPS = ("SimplifiedLayerNormalization",)


def _host_profile_name() -> str:
    machine = platform.machine().lower()
    return "arm-cortex-a76" if machine in ("aarch64", "arm64") else "x86-avx512"


@functools.lru_cache(maxsize=1)
def _cpu_kernels() -> dict[tuple[str, str], list[tuple[int, int]]] | None:
    """(domain, op) -> opset version ranges of onnxruntime's CPU kernels, if exposed."""
    try:
        from onnxruntime.capi import onnxruntime_pybind11_state as ort_c

        kernel_defs = ort_c.get_all_opkernel_def()
    except Exception:
        return None
    table: dict[tuple[str, str], list[tuple[int, int]]] = {}
    for kernel in kernel_defs:
        if kernel.provider == "CPUExecutionProvider":
            low, high = kernel.version_range
            table.setdefault((kernel.domain, kernel.op_name), []).append((low, high))
    return table


@functools.lru_cache(maxsize=1)
def _contrib_ops() -> frozenset[tuple[str, str]]:
    """(domain, op) of non-ONNX ops onnxruntime runs on the CPU."""
    kernels = _cpu_kernels()
    if kernels is not None:
        return frozenset(key for key in kernels if key[0] not in _ONNX_DOMAINS)
    try:
        from onnxruntime.capi import onnxruntime_pybind11_state as ort_c

        return frozenset(
            (schema.domain, schema.name)
            for schema in ort_c.get_all_operator_schema()
            if schema.domain not in _ONNX_DOMAINS
        )
    except Exception:
        return _CONTRIB_CPU_OPS_FALLBACK


def _covers(ranges: list[tuple[int, int]] | None, version: int) -> bool:
    return any(low <= version <= high for low, high in ranges or ())


@functools.lru_cache(maxsize=4096)
def unsupported_reason(domain: str, op_type: str, version: int) -> str:
    """Why ONNX Runtime's CPU provider cannot run ``domain::op_type`` at ``version``, or ``""``."""
    import onnx.defs

    kernels = _cpu_kernels()
    if domain in _ONNX_DOMAINS:
        onnx_domain = _ONNX_DOMAINS[domain]
        try:
            schema = onnx.defs.get_schema(op_type, version, onnx_domain)
        except onnx.defs.SchemaError:
            schema = None
        if schema is None or schema.deprecated:
            # onnxruntime registers a few of its own ops in the ONNX domain.
            if kernels is not None and _covers(kernels.get((onnx_domain, op_type)), version):
                return ""
            state = "deprecated" if schema is not None else "not an op"
            label = "ONNX" if onnx_domain == "" else onnx_domain
            return f"'{op_type}' is {state} in {label} at opset {version}"
        if kernels is None or op_type == "Constant":
            return ""  # ORT folds Constant into an initializer; no kernel table: trust ORT
        if schema.has_function or schema.has_context_dependent_function:
            return ""  # ORT expands the function body when it has no kernel
        if _covers(kernels.get((onnx_domain, op_type)), schema.since_version):
            return ""
        return f"onnxruntime has no CPU kernel for {op_type}-{schema.since_version}"
    if (domain, op_type) not in _contrib_ops():
        if not any(known == domain for known, _ in _contrib_ops()):
            return f"onnxruntime implements no ops in domain '{domain}'"
        return f"onnxruntime has no CPU kernel for {domain}::{op_type}"
    if kernels is not None and not _covers(kernels.get((domain, op_type)), version):
        return f"onnxruntime has no CPU kernel for {domain}::{op_type} version {version}"
    return ""


def _walk(model: ir.Model, node: ir.Node) -> Iterator[tuple[ir.Node, Mapping[str, int]]]:
    """``node`` and every node it runs: subgraph bodies and model-local function bodies.

    Iterative; each node comes with the opset imports in force where it sits.
    """
    stack: list[tuple[ir.Node, Mapping[str, int]]] = [(node, model.opset_imports)]
    seen_functions: set[Any] = set()
    while stack:
        current, opsets = stack.pop()
        yield current, opsets
        for attr in current.attributes.values():
            graphs = []
            if attr.type.name == "GRAPH":
                graphs = [attr.value]
            elif attr.type.name == "GRAPHS":
                graphs = list(attr.value)
            for graph in graphs:
                stack.extend((inner, opsets) for inner in reversed(list(graph)))
        key = (current.domain, current.op_type, getattr(current, "overload", ""))
        function = model.functions.get(key)
        if function is not None and key not in seen_functions:
            seen_functions.add(key)
            stack.extend((inner, function.opset_imports) for inner in reversed(list(function)))


def _node_problem(model: ir.Model, node: ir.Node) -> tuple[ir.Node, str] | None:
    """The first node (``node`` or one it contains) the CPU provider cannot run, and why."""
    for current, opsets in _walk(model, node):
        key = (current.domain, current.op_type, getattr(current, "overload", ""))
        if key in model.functions:
            continue  # ORT inlines model-local functions; their bodies are checked instead
        domain = current.domain
        version = current.version
        if version is None:
            version = opsets.get(domain)
            if version is None and domain in _ONNX_DOMAINS:
                version = opsets.get("ai.onnx" if domain == "" else "", 1)
            version = version if version is not None else 1
        reason = unsupported_reason(domain, current.op_type, version)
        if reason:
            return current, reason
    return None


def _where(node: ir.Node, outer: ir.Node) -> str:
    domain = node.domain or "ai.onnx"
    text = f"op '{node.op_type}' in domain '{domain}' at node {node_label(node)}"
    if node is not outer:
        text += f" inside {node_label(outer)}"
    return text


class OrtCompiledModel(CompiledModel):
    """A model lowered to an ONNX Runtime CPU session.

    ``session`` is the ``onnxruntime.InferenceSession``; ``session_options`` the options it
    was created with (threads, optimization level, sequential execution).
    """

    def __init__(
        self,
        model: Model,
        *,
        options: Mapping[str, Any],
        report: Any = None,
        profile_name: str | None = None,
        source_path: Path | None = None,
    ) -> None:
        super().__init__("ort-cpu", model, options=options, report=report, profile_name=profile_name)
        self._source_path = source_path
        self._workdir: tempfile.TemporaryDirectory[str] | None = None
        self.session_options = _session_options(self.options)
        self.session = self._create_session()
        self._output_names = [output.name for output in self.session.get_outputs()]

    def _create_session(self) -> Any:
        import onnxruntime as ort

        source: str | bytes
        if self._source_path is not None:
            source = str(self._source_path)
        else:
            source = self._serialized_or_file()
        try:
            refused = refusing_optimizers(int(self.options["threads"])) if self.options["optimization"] != "disabled" else []
            return ort.InferenceSession(
                source, self.session_options, providers=["CPUExecutionProvider"], disabled_optimizers=refused
            )
        except Exception as exc:
            if not _is_ort_error(exc):
                raise
            message = _ort_message(exc)
            if type(exc).__name__ == "NotImplemented":
                raise UnsupportedOpError(
                    f"onnxruntime cannot run the lowered model: {message}",
                    hint="an op or dtype combination has no CPU kernel; rewrite it with a pass",
                ) from None
            raise ModelLoadError(
                f"onnxruntime rejected the lowered model: {message}",
                hint="the model may use an opset or dtype this onnxruntime does not support",
            ) from None

    def _serialized_or_file(self) -> str | bytes:
        """The model as bytes, or as a file in a private temp dir when it must be one."""
        import onnx_ir as ir

        model = self.model.ir
        if weights_nbytes(model) <= INLINE_WEIGHTS_LIMIT_BYTES:
            proto = ir.to_proto(model)
            external = any(
                t.data_location == t.EXTERNAL for t in iter_tensor_protos(proto.graph)
            )
            if not external:
                return proto.SerializeToString()
        # Large, or holding lazily loaded external weights: ORT reads them from a file.
        self._workdir = tempfile.TemporaryDirectory(prefix="greencc-ort-")
        return str(save_model(model, Path(self._workdir.name) / MODEL_FILE))

    def _run(self, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            outputs = self.session.run(self._output_names, arrays)
        except Exception as exc:
            if not _is_ort_error(exc):
                raise
            raise _runtime_error(exc) from None
        return dict(zip(self._output_names, outputs, strict=True))

    def decode_session(self, batch: int, capacity: int) -> DecodeSession:
        """An IO-bound session with preallocated KV buffers when the graph's signature is the
        float32 decoder contract; the generic session otherwise."""
        spec = DecoderSpec.of(self.model)
        if spec is not None and _binds_float32_cache(self.session, spec):
            return IoBoundDecodeSession(self.session, spec, batch, capacity,
                                        shared=_appends_in_place(self.model, spec))
        return super().decode_session(batch, capacity)

    def with_options(self, **options: Any) -> OrtCompiledModel:
        """A copy with a new session built with changed ``threads`` / ``optimization``."""
        checked = OrtCpu(**{**self.options, **options}).options
        return OrtCompiledModel(
            self.model,
            options=checked,
            report=self.report,
            profile_name=self.profile_name,
            source_path=self._source_path,
        )

    def _save_artifact(self, directory: Path) -> list[str]:
        large = weights_nbytes(self.model.ir) > ARTIFACT_EXTERNAL_DATA_BYTES
        save_model(self.model.ir, directory / MODEL_FILE, external_data=True if large else None)
        return [name for name in (MODEL_FILE, DATA_FILE) if (directory / name).is_file()]

    @classmethod
    def _load_artifact(cls, directory: Path, manifest: dict[str, Any]) -> OrtCompiledModel:
        for name in manifest["files"]:
            if not (directory / name).is_file():
                raise ModelLoadError(
                    f"{directory}: artifact file '{name}' listed in the manifest is missing",
                    hint="the artifact is incomplete; compile again",
                )
        if MODEL_FILE not in manifest["files"]:
            raise ModelLoadError(
                f"{directory}: the manifest lists no {MODEL_FILE}",
                hint="the artifact is corrupt; compile again",
            )
        # ONNX Runtime reads the saved file itself: serializing the IR back to bytes would
        # hold a third copy of the weights (measured, a 539 MB decoder: 1.94 -> 1.40 GB resident).
        return cls(
            load(directory / MODEL_FILE),
            options=manifest["options"],
            profile_name=manifest.get("profile"),
            source_path=directory / MODEL_FILE,
        )


class IoBoundDecodeSession:
    """Decode steps through ONNX Runtime's IO binding, without per-token allocation.

    ``shared=False``: every past/present pair owns two float32 buffers sized for
    ``capacity`` tokens, used in turn: a step reads the past from one and ONNX Runtime
    writes the present straight into the other, each viewed as a contiguous [batch,
    kv_heads, length, head_dim] tensor; the graph still copies the past into the present
    (its Concat). ``shared=True`` (every present comes from GroupQueryAttention): one
    [batch, kv_heads, capacity, head_dim] buffer per pair is bound as both past and present,
    and the kernel appends the new keys and values in place (its seqlens_k says how many are
    valid), so nothing is copied per token. The logits land in a buffer sized for the
    longest step.
    """

    def __init__(self, session: Any, spec: DecoderSpec, batch: int, capacity: int, *, shared: bool = False) -> None:
        self._session = session
        self._spec = spec
        self._batch = batch
        self._binding = session.io_binding()
        self._shared = shared
        kv_size = batch * spec.num_kv_heads * capacity * spec.head_dim
        self._kv = [
            (first := np.zeros(kv_size, dtype=np.float32), first if shared else np.empty(kv_size, dtype=np.float32))
            for _ in spec.past_names()
        ]
        self._kv_pointers = [(first.ctypes.data, second.ctypes.data) for first, second in self._kv]
        self._logits = np.empty(0, dtype=np.float32)
        self._capacity = capacity
        self._past_len = 0
        self._turn = 0

    def step(self, input_ids: np.ndarray, attention_mask: np.ndarray, position_ids: np.ndarray) -> np.ndarray:
        """See :class:`greencc.target.generation.DecodeSession`."""
        spec, batch, binding = self._spec, self._batch, self._binding
        seq = input_ids.shape[1]
        total = self._past_len + seq
        if total > self._capacity:
            raise UsageError(
                f"the decode session holds {self._capacity} tokens, this step needs {total}",
                hint="open the session with a larger capacity",
            )
        logits_size = batch * seq * spec.vocab_size
        if self._logits.size < logits_size:
            self._logits = np.empty(logits_size, dtype=np.float32)
        binding.bind_cpu_input("input_ids", np.ascontiguousarray(input_ids, dtype=np.int64))
        binding.bind_cpu_input("attention_mask", np.ascontiguousarray(attention_mask, dtype=np.int64))
        binding.bind_cpu_input("position_ids", np.ascontiguousarray(position_ids, dtype=np.int64))
        past_shape = [batch, spec.num_kv_heads, self._capacity if self._shared else self._past_len, spec.head_dim]
        present_shape = [batch, spec.num_kv_heads, self._capacity if self._shared else total, spec.head_dim]
        # Shared buffers keep one pointer and one shape: bound once (120 binds cost ~0.8 ms a
        # step on a 30-layer model, a tenth of an int4 decode step).
        if not (self._shared and self._past_len):
            for pointers, past, present in zip(self._kv_pointers, spec.past_names(), spec.present_names(), strict=True):
                source, dest = pointers[self._turn], pointers[1 - self._turn]
                binding.bind_input(past, "cpu", 0, np.float32, past_shape, source)
                binding.bind_output(present, "cpu", 0, np.float32, present_shape, dest)
        binding.bind_output(
            "logits", "cpu", 0, np.float32, [batch, seq, spec.vocab_size], self._logits.ctypes.data
        )
        try:
            self._session.run_with_iobinding(binding)
        except Exception as exc:
            if not _is_ort_error(exc):
                raise
            raise _runtime_error(exc) from None
        self._past_len = total
        self._turn = 1 - self._turn
        logits = self._logits[:logits_size].reshape(batch, seq, spec.vocab_size)
        return logits[:, -1, :].copy()


def _appends_in_place(model: Model, spec: DecoderSpec) -> bool:
    """True when GroupQueryAttention writes every present key/value and is the only reader
    of every past one (``past-shape-from-mask`` removes the export's shape reads): it can
    then append to one buffer bound as both past and present."""
    graph = model.ir.graph
    outputs, inputs = {v.name: v for v in graph.outputs}, {v.name: v for v in graph.inputs}

    def is_gqa(node: ir.Node | None) -> bool:
        return node is not None and node.op_type == "GroupQueryAttention" and node.domain == "com.microsoft"

    return (all(name in outputs and is_gqa(outputs[name].producer()) for name in spec.present_names())
            and all(name in inputs and inputs[name].uses() and all(is_gqa(user) for user, _ in inputs[name].uses())
                    for name in spec.past_names()))


def _binds_float32_cache(session: Any, spec: DecoderSpec) -> bool:
    """True when the session's inputs and outputs are the decoder contract's, KV and logits
    in float32, so that they can be bound to greencc's buffers."""
    inputs = {value.name: value.type for value in session.get_inputs()}
    outputs = {value.name: value.type for value in session.get_outputs()}
    floats = [*(inputs.get(n) for n in spec.past_names()), *(outputs.get(n) for n in spec.present_names()),
              outputs.get("logits")]
    ints = [inputs.get(n) for n in ("input_ids", "attention_mask", "position_ids")]
    return all(t == "tensor(float)" for t in floats) and all(t == "tensor(int64)" for t in ints)


@register_target("ort-cpu")
class OrtCpu(Target):
    """ONNX Runtime on the CPU: runs anywhere, and runs what other targets leave unclaimed.

    Options: ``threads`` (intra-op threads, default ``os.cpu_count()``) and
    ``optimization`` (ONNX Runtime graph optimization level: all, extended, basic,
    disabled; default all).
    """

    description = "ONNX Runtime, CPU execution provider (runs anywhere; the fallback target)"
    profile_name = _host_profile_name()
    default_options = {"threads": None, "optimization": "all"}
    compiled_model_class = OrtCompiledModel

    def check_options(self, options: Mapping[str, Any]) -> dict[str, Any]:
        """Validate ``threads`` (1 to cores x 4, default ``os.cpu_count()``) and
        ``optimization`` (a level name)."""
        checked = super().check_options(options)
        threads = checked["threads"] if checked["threads"] is not None else os.cpu_count() or 1
        level = str(checked["optimization"]).lower()
        if level not in OPTIMIZATION_LEVELS:
            raise UsageError(
                f"target 'ort-cpu': optimization={checked['optimization']!r} is not a level",
                hint=f"choose one of {', '.join(OPTIMIZATION_LEVELS)}",
            )
        return {"threads": threads, "optimization": level}

    def available(self) -> Availability:
        """Available when onnxruntime imports and offers its CPU execution provider."""
        try:
            import onnxruntime as ort

            providers = ort.get_available_providers()
        except Exception as exc:
            return Availability(False, f"onnxruntime cannot be used: {type(exc).__name__}: {exc}")
        if "CPUExecutionProvider" not in providers:
            return Availability(False, f"onnxruntime offers no CPU provider ({providers})")
        return Availability(True)

    def capability(self, model: Model) -> list[Partition]:
        """Runs of nodes it can run (``ort-cpu``) and cannot (``unsupported``, with why)."""
        verdicts = []
        for index, node in enumerate(model.graph):
            problem = _node_problem(model.ir, node)
            if problem is None:
                verdicts.append((node_id(node, index), self.name, ""))
            else:
                inner, reason = problem
                verdicts.append((node_id(node, index), UNSUPPORTED, f"{_where(inner, node)}: {reason}"))
        return group_partitions(verdicts)

    def supported_fused_ops(self) -> set[str]:
        """Contrib ops with CPU kernels, e.g. ``com.microsoft::Attention``, and the ops
        onnxruntime adds to the ONNX domain (``ai.onnx::SimplifiedLayerNormalization``)."""
        contrib = {f"{domain}::{op}" for domain, op in _contrib_ops() if domain == "com.microsoft"}
        kernels = _cpu_kernels() or {}
        return contrib | {f"ai.onnx::{op}" for op in _ORT_ONNX_DOMAIN_OPS if ("", op) in kernels}

    def slower_fused_ops(self) -> dict[str, str]:
        """Fused kernels measured slower on this host than their unfused ops at the
        target's threads (:func:`targets.ort.kernel_choice.slower_fused_kernels`); the
        sessions it builds keep onnxruntime from fusing those back."""
        return slower_fused_kernels(int(self.options["threads"]))

    def lower(self, model: Model, ctx: PassContext | None = None) -> OrtCompiledModel:
        """Check every node is runnable, then build an ONNX Runtime CPU session.

        Raises ``UnsupportedOpError`` naming the op, its domain and the node when a node
        is not, and ``TargetUnavailableError`` when onnxruntime cannot be used.
        """
        self.require_available()
        problems = [(p, node) for node in model.graph if (p := _node_problem(model.ir, node))]
        if problems:
            (inner, reason), outer = problems[0]
            more = f"; {len(problems) - 1} more unsupported node(s)" if len(problems) > 1 else ""
            raise UnsupportedOpError(
                f"unsupported {_where(inner, outer)}: {reason}{more}",
                hint="rewrite or remove it with a pass, or choose a target that implements it",
            )
        return OrtCompiledModel(
            model.clone(), options=self.options, profile_name=self.selected_profile_name
        )


def _session_options(options: Mapping[str, Any]) -> Any:
    import onnxruntime as ort

    levels = {
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    }
    session_options = ort.SessionOptions()
    session_options.intra_op_num_threads = int(options["threads"])
    # One op at a time: latency and energy measurements stay comparable across models.
    session_options.inter_op_num_threads = 1
    session_options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    session_options.graph_optimization_level = levels[options["optimization"]]
    session_options.log_severity_level = 4  # fatal only: its errors surface as greencc errors
    return session_options


def _is_ort_error(exc: BaseException) -> bool:
    return type(exc).__module__.startswith("onnxruntime")


_ORT_PREFIX = re.compile(r"^\s*\[ONNXRuntimeError\]\s*:\s*\d+\s*:\s*\w+\s*:\s*")
# Words in onnxruntime's messages when inputs disagree with the graph's shapes at run time.
_SHAPE_WORDS = re.compile(r"dimension|broadcast|shape|rank|axis|indices|index", re.IGNORECASE)


def _ort_message(exc: BaseException) -> str:
    return _ORT_PREFIX.sub("", str(exc)).strip()


def _runtime_error(exc: BaseException) -> GreenccError:
    message = _ort_message(exc)
    if type(exc).__name__ == "InvalidArgument" or _SHAPE_WORDS.search(message):
        return InputMismatchError(
            f"onnxruntime rejected the inputs: {message}",
            hint="check the feeds' shapes (and values used as shapes or indices) against "
            "compiled.model.inputs",
        )
    return GreenccError(
        f"onnxruntime failed while running the model: {message}",
        hint="please report it with the model and inputs",
    )


__all__ = ["IoBoundDecodeSession", "OrtCpu", "OrtCompiledModel", "unsupported_reason"]
