"""Loading and saving ONNX models safely: greencc owns the external-data policy.

Models are untrusted input: sizes are checked before bytes are read, external data is
only read from inside the model's own folder, nothing is unpickled, every failure is a
greencc error naming the cause, and outputs are written atomically.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import onnx
import onnx_ir as ir
from google.protobuf.message import Message

from greencc.errors import ModelLoadError, UnsupportedOpError, UsageError
from greencc.ir.traversal import find_cycle, node_label

# Protobuf refuses messages over 2 GiB; beyond that weights must live in external data.
PROTOBUF_LIMIT_BYTES = 2**31 - 1
# Above this many bytes of weights, saved models put tensors in a side file (.data).
EXTERNAL_DATA_THRESHOLD_BYTES = 1 << 30
# Tensors up to this size stay inside the .onnx file even when saving external data.
INLINE_TENSOR_MAX_BYTES = 1024
# Location written into weight-elided copies made only for ONNX's checker.
_ELIDED = "__greencc_elided__"

# Who holds a tensor: an initializer's Value, or (node, attribute name).
TensorOwner = ir.Value | tuple[ir.Node, str]


def load_model(source: str | os.PathLike | bytes | onnx.ModelProto) -> ir.Model:
    """Load, validate and topologically sort an ONNX model from a path, bytes or a proto.

    Raises :class:`ModelLoadError` naming the problem (missing, empty, truncated, not ONNX,
    cyclic, external data outside the model folder or shorter than it claims) and
    :class:`UnsupportedOpError` for an operator unknown to its ONNX domain. Ops of custom
    domains load fine: whether they run is the target's decision. The input is only read.
    """
    base_dir: Path | None = None
    if isinstance(source, onnx.ModelProto):
        proto = source
        origin = "<in-memory ModelProto>"
    elif isinstance(source, (bytes, bytearray, memoryview)):
        origin = "<bytes>"
        proto = _parse_bytes(bytes(source), origin)
    elif isinstance(source, (str, os.PathLike)):
        path = Path(source)
        origin = str(path)
        proto = _read_proto(path)
        base_dir = path.resolve().parent
    else:
        raise UsageError(
            f"cannot load a model from a {type(source).__name__}",
            hint="pass a path to an .onnx file, its bytes or an onnx.ModelProto "
            "(for a torch.nn.Module use greencc.from_torch)",
        )
    _check_basic_structure(proto, origin)
    _check_fields(proto, origin)
    _check_external_data(proto, base_dir, origin)
    try:
        model = ir.serde.deserialize_model(proto)
    except Exception as exc:  # the deserializer raises many types on malformed protos
        raise ModelLoadError(
            f"{origin} is not a valid ONNX model: it could not be read ({_first_line(exc)})",
            hint="the file may be corrupt or truncated; re-export it",
        ) from None
    if base_dir is not None:
        ir.external_data.set_base_dir(model.graph, str(base_dir))
    cycle = find_cycle(model.graph)
    if cycle is not None:
        raise ModelLoadError(
            f"{origin}: the graph has a cycle through {_cycle_text(cycle)}",
            hint="ONNX graphs must be acyclic; fix the exporter or the edit that introduced it",
        )
    try:
        model.graph.sort()
    except ValueError as exc:  # a cycle inside a subgraph
        raise ModelLoadError(
            f"{origin}: a subgraph has a cycle ({_first_line(exc)})",
            hint="ONNX graphs must be acyclic; fix the exporter or the edit that introduced it",
        ) from None
    check_model(model, origin)
    return model


def _read_proto(path: Path) -> onnx.ModelProto:
    if not path.exists():
        kind = "broken symlink" if path.is_symlink() else "no such file"
        raise ModelLoadError(f"{path}: {kind}", hint="check the path")
    if path.is_dir():
        raise ModelLoadError(
            f"{path} is a directory, not an ONNX file",
            hint="pass the .onnx file inside it, or CompiledModel.load() for a compiled artifact",
        )
    if not path.is_file():
        raise ModelLoadError(f"{path} is not a regular file", hint="pass an .onnx file")
    size = path.stat().st_size
    if size == 0:
        raise ModelLoadError(f"{path}: the file is empty", hint="re-export the model")
    if size > PROTOBUF_LIMIT_BYTES:
        raise ModelLoadError(
            f"{path}: {size} bytes is over protobuf's 2 GiB limit for one ONNX file",
            hint="save the weights as external data next to the model",
        )
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ModelLoadError(f"{path}: cannot read it ({exc.strerror})", hint="check permissions") from None
    return _parse_bytes(data, str(path))


def _parse_bytes(data: bytes, origin: str) -> onnx.ModelProto:
    if not data:
        raise ModelLoadError(f"{origin}: the data is empty", hint="re-export the model")
    if len(data) > PROTOBUF_LIMIT_BYTES:
        raise ModelLoadError(
            f"{origin}: {len(data)} bytes is over protobuf's 2 GiB limit for one ONNX model",
            hint="save the weights as external data and load the model by path",
        )
    proto = onnx.ModelProto()
    try:
        proto.ParseFromString(data)
    except Exception as exc:  # DecodeError, and RuntimeWarning/ValueError on some builds
        looks_like, hint = _what_it_looks_like(data)
        raise ModelLoadError(
            f"{origin} is not a valid ONNX model: protobuf could not parse it "
            f"({_first_line(exc)}); {looks_like}",
            hint=hint,
        ) from None
    return proto


def _what_it_looks_like(data: bytes) -> tuple[str, str]:
    """A guess at what non-ONNX bytes are, and what to do, for the error message."""
    head = data[:512]
    from_torch = "export the module with greencc.from_torch(module, example_inputs)"
    if head.startswith(b"PK\x03\x04"):
        return "it looks like a zip archive (a PyTorch checkpoint?)", from_torch
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "it looks like a Python pickle, which greencc never loads", from_torch
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return "it may be truncated or in another binary format", "re-export it as ONNX"
    if "ir_version" in text or "opset_import" in text:
        return (
            "it looks like ONNX text",
            "parse it with onnx.parser.parse_model(text) and pass the ModelProto",
        )
    if all(c.isprintable() or c.isspace() for c in text):
        return "it looks like a text file", "pass the binary .onnx file"
    return "it may be truncated or in another binary format", "re-export it as ONNX"


def _check_basic_structure(proto: onnx.ModelProto, origin: str) -> None:
    # Protobuf parses many random byte strings "successfully"; a real model has these.
    if proto.ir_version <= 0 or not proto.HasField("graph") or not proto.opset_import:
        missing = [
            what
            for what, ok in (
                ("IR version", proto.ir_version > 0),
                ("graph", proto.HasField("graph")),
                ("opset import", bool(proto.opset_import)),
            )
            if not ok
        ]
        raise ModelLoadError(
            f"{origin} is not a valid ONNX model: it has no {', no '.join(missing)} "
            "(truncated, text, or another format?)",
            hint="re-export it as ONNX",
        )


def _check_fields(proto: onnx.ModelProto, origin: str) -> None:
    """What ONNX's checker lets through and greencc cannot hold, found in one walk over
    every message: text that is not UTF-8 (protobuf hands it back as bytes, which no name
    can be), a negative dim, a tensor or graph input/output of type UNDEFINED, and an
    attribute of type UNDEFINED. Raises :class:`ModelLoadError` naming the field."""
    for value in (*proto.graph.input, *proto.graph.output):
        if value.type.HasField("tensor_type") and value.type.tensor_type.elem_type == onnx.TensorProto.UNDEFINED:
            raise ModelLoadError(f"{origin} is not a valid ONNX model: graph input or output '{value.name}' "
                                 "has element type UNDEFINED", hint="re-export or repair the model")
    stack: list[Message] = [proto]
    while stack:
        message = stack.pop()
        kind = message.DESCRIPTOR.full_name
        problem = None
        if kind == "onnx.TensorShapeProto.Dimension" and message.HasField("dim_value") and message.dim_value < 0:
            problem = f"a dim of {message.dim_value}"
        elif kind == "onnx.TensorProto" and message.data_type == onnx.TensorProto.UNDEFINED:
            problem = f"tensor '{message.name}' of data type UNDEFINED"
        elif kind == "onnx.AttributeProto" and message.type == onnx.AttributeProto.UNDEFINED:
            problem = f"attribute '{message.name}' of type UNDEFINED"
        if problem is not None:
            raise ModelLoadError(f"{origin} is not a valid ONNX model: it has {problem}",
                                 hint="re-export or repair the model")
        for field, value in message.ListFields():
            if field.type == field.TYPE_STRING:
                texts = [value] if isinstance(value, (str, bytes)) else value
                if any(isinstance(text, bytes) for text in texts):
                    raise ModelLoadError(
                        f"{origin} is not a valid ONNX model: a {field.name} field of its "
                        f"{message.DESCRIPTOR.name} is not UTF-8 text",
                        hint="ONNX names and texts are UTF-8; re-export or repair the model",
                    )
            elif field.type == field.TYPE_MESSAGE:
                stack.extend([value] if isinstance(value, Message) else value)


def iter_tensor_protos(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    """Yield every TensorProto in ``graph`` and its subgraphs (initializers and attributes)."""
    stack = [graph]
    while stack:
        g = stack.pop()
        yield from g.initializer
        for sparse in g.sparse_initializer:
            yield sparse.values
            yield sparse.indices
        for node in g.node:
            for attr in node.attribute:
                if attr.HasField("t"):
                    yield attr.t
                yield from attr.tensors
                if attr.HasField("g"):
                    stack.append(attr.g)
                stack.extend(attr.graphs)


def _check_external_data(proto: onnx.ModelProto, base_dir: Path | None, origin: str) -> None:
    for tensor in iter_tensor_protos(proto.graph):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        info = {entry.key: entry.value for entry in tensor.external_data}
        location = info.get("location", "")
        where = f"{origin}: tensor '{tensor.name}'"
        if base_dir is None:
            raise ModelLoadError(
                f"{where} stores its data externally ('{location}') "
                "but the model was not given as a file path",
                hint="load it with greencc.load(path) so the data file can be found",
            )
        if not location:
            raise ModelLoadError(
                f"{where} is marked external but names no data file", hint="re-export the model"
            )
        if "\x00" in location:
            raise ModelLoadError(f"{where} names an external data file with a NUL character in it",
                                 hint="re-export the model")
        # Reject by the text first ('../x', '/abs'), then by where symlinks really lead.
        lexical = Path(os.path.normpath(base_dir / location))
        target = (base_dir / location).resolve()
        if (
            os.path.isabs(location)
            or not lexical.is_relative_to(base_dir)
            or not target.is_relative_to(base_dir)
        ):
            raise ModelLoadError(
                f"{where} points to external data '{location}' outside the model's folder "
                f"{base_dir}",
                hint="external data is read only from inside the model's own folder; "
                "move the data file next to the model and fix its location",
            )
        if not target.is_file():
            raise ModelLoadError(
                f"{where}: its external data file '{location}' is missing",
                hint="copy the .data file next to the model",
            )
        stat = target.stat()
        if stat.st_nlink > 1:
            # onnx_ir refuses hard-linked data too (a way around the folder check).
            raise ModelLoadError(
                f"{where}: external data file '{location}' has {stat.st_nlink} hard links",
                hint="copy the data file instead of hard-linking it",
            )
        try:
            offset = int(info.get("offset", 0))
            length = int(info["length"]) if "length" in info else None
        except ValueError:
            raise ModelLoadError(
                f"{where}: external data offset/length are not integers ({info})",
                hint="re-export the model",
            ) from None
        expected = _tensor_nbytes(tensor)
        if length is not None and expected is not None and length != expected:
            raise ModelLoadError(
                f"{where} declares {length} bytes of external data but its shape and dtype "
                f"need {expected}",
                hint="re-export the model",
            )
        needed = length if length is not None else expected or 0
        if offset < 0 or offset + needed > stat.st_size:
            raise ModelLoadError(
                f"{where} reads bytes {offset}..{offset + needed} of '{location}', "
                f"which has only {stat.st_size} bytes: the external data file is truncated",
                hint="copy the complete .data file or re-export the model",
            )


def _tensor_nbytes(tensor: onnx.TensorProto) -> int | None:
    """Bytes a tensor's data takes, from its dims and dtype; None when unknown (strings)."""
    try:
        dtype = ir.DataType(tensor.data_type)
    except ValueError:
        return None
    if dtype == ir.DataType.STRING or dtype == ir.DataType.UNDEFINED:
        return None
    return math.ceil(math.prod(tensor.dims) * dtype.bitwidth / 8)


def check_model(model: ir.Model, origin: str = "model") -> None:
    """Run ONNX's checker on ``model`` without copying its weights; raise a greencc error.

    Raises :class:`UnsupportedOpError` for an op its ONNX domain does not define at the
    model's opset and :class:`ModelLoadError` for any other violation. Custom domains are
    not checked (their ops are the target's business).
    """
    _check_defined_values(model, origin)
    proto = _checkable_proto(model)
    try:
        onnx.checker.check_model(proto)
    except onnx.checker.ValidationError as exc:
        text = " ".join(str(exc).split()) or repr(exc)
        if "No Op registered" in text:
            raise _unsupported_op_error(model, text, origin) from None
        match = re.search(r"No opset import for domain '?([^' ]*)'?", text)
        if match:
            raise ModelLoadError(
                f"{origin} uses ops of domain '{match.group(1)}' but does not import it: {text}",
                hint=f"add an opset_import entry for '{match.group(1)}'",
            ) from None
        raise ModelLoadError(
            f"{origin} is not a valid ONNX model: {text}", hint="re-export or repair the model"
        ) from None


def _check_defined_values(model: ir.Model, origin: str) -> None:
    """Every node input must be a graph input, an initializer or some node's output."""
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        for value in node.inputs:
            if value is None or value.producer() is not None:
                continue
            if value.is_graph_input() or value.is_initializer():
                continue
            raise ModelLoadError(
                f"{origin} is not a valid ONNX model: node {node_label(node)} reads "
                f"'{value.name}', which no node, graph input or initializer defines",
                hint="re-export the model, or fix the edit that removed its producer",
            )


def _unsupported_op_error(model: ir.Model, text: str, origin: str) -> UnsupportedOpError:
    match = re.search(r"No Op registered for (\S+) with domain_version of (\d+)", text)
    op_type = match.group(1) if match else None
    name_match = re.search(r"Name: (\S*) OpType: (\S+)", text)
    node_name = name_match.group(1) if name_match else None
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        if node.op_type == op_type and (not node_name or node.name == node_name):
            domain = node.domain or "ai.onnx"
            version = match.group(2) if match else "?"
            hint = "check the exporter's opset, or use a custom domain for a custom op"
            if onnx.defs.has(node.op_type, node.domain):
                since = onnx.defs.get_schema(node.op_type, node.domain).since_version
                hint = f"'{node.op_type}' exists from opset {since} on; re-export with that opset"
            return UnsupportedOpError(
                f"{origin}: unsupported op '{node.op_type}' in domain '{domain}' "
                f"(opset {version}) at node {node_label(node)}",
                hint=hint,
            )
    return UnsupportedOpError(f"{origin}: {text}")


def _checkable_proto(model: ir.Model) -> onnx.ModelProto:
    """A ModelProto of ``model`` for the checker: same structure, weights left out.

    Large in-memory tensors are swapped for stand-ins while serialising (ONNX's checker
    cannot take protos over 2 GiB, and copying weights per check is slow; cloning a big
    graph costs more than the check), then restored; external ones become zero-element
    stand-ins as well (their files were validated when loading, and the checker would
    resolve them against the working directory).
    """
    swapped: list[tuple[ir.Value, ir.TensorProtocol]] = []
    try:
        for graph in model.graphs():
            for value in graph.initializers.values():
                tensor = value.const_value
                if tensor is None or isinstance(tensor, ir.ExternalTensor):
                    continue
                if tensor.nbytes > INLINE_TENSOR_MAX_BYTES:
                    swapped.append((value, tensor))
                    value.const_value = ir.ExternalTensor(
                        _ELIDED, offset=0, length=tensor.nbytes, dtype=tensor.dtype,
                        shape=tensor.shape, name=value.name,
                    )
        proto = ir.to_proto(model)
    finally:
        for value, tensor in swapped:
            value.const_value = tensor
    for node in _all_node_protos(proto.graph):
        if node.domain in ("", "ai.onnx") and node.op_type in ONNXRUNTIME_ONNX_DOMAIN_OPS:
            node.domain = ONNXRUNTIME_EXTENSION_DOMAIN  # the checker skips custom domains
    if any(node.domain == ONNXRUNTIME_EXTENSION_DOMAIN for node in _all_node_protos(proto.graph)):
        proto.opset_import.append(onnx.helper.make_opsetid(ONNXRUNTIME_EXTENSION_DOMAIN, 1))
    for tensor in iter_tensor_protos(proto.graph):
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            del tensor.external_data[:]
            tensor.data_location = onnx.TensorProto.DEFAULT
            del tensor.dims[:]
            tensor.dims.append(0)
    return proto


# Ops onnxruntime defines in the ONNX domain although ONNX does not (fusions emit them for
# the targets that run them); the checker sees them under a stand-in custom domain.
ONNXRUNTIME_ONNX_DOMAIN_OPS = frozenset({"SimplifiedLayerNormalization"})
ONNXRUNTIME_EXTENSION_DOMAIN = "greencc.onnxruntime-onnx-domain"


def _all_node_protos(graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    """Every node of ``graph`` and its subgraphs (iterative)."""
    nodes, pending = [], [graph]
    while pending:
        current = pending.pop()
        for node in current.node:
            nodes.append(node)
            for attribute in node.attribute:
                pending.extend([attribute.g] if attribute.HasField("g") else [])
                pending.extend(attribute.graphs)
    return nodes


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _cycle_text(cycle: list[ir.Node]) -> str:
    shown = " -> ".join(node_label(n) for n in cycle[:6])
    return shown + (" -> ..." if len(cycle) > 6 else "") + f" -> {node_label(cycle[0])}"


def iter_tensors(model: ir.Model) -> Iterator[tuple[TensorOwner, ir.TensorProtocol]]:
    """Yield ``(owner, tensor)`` for every tensor of ``model``, subgraphs included.

    ``owner`` is the initializer's ``Value``, or ``(node, attribute name)`` for a tensor
    held in a node attribute (``Constant``'s ``value``, for example).
    """
    for graph in model.graphs():
        for value in graph.initializers.values():
            if value.const_value is not None:
                yield value, value.const_value
        for node in graph:
            for name, attr in node.attributes.items():
                if not isinstance(attr, ir.Attr) or attr.is_ref():
                    continue
                if attr.type == ir.AttributeType.TENSOR and attr.value is not None:
                    yield (node, name), attr.value
                elif attr.type == ir.AttributeType.TENSORS and attr.value is not None:
                    for tensor in attr.value:
                        yield (node, name), tensor


def weights_nbytes(model: ir.Model) -> int:
    """Total size of the model's initializers in bytes (main graph and subgraphs)."""
    return sum(
        value.const_value.nbytes
        for graph in model.graphs()
        for value in graph.initializers.values()
        if value.const_value is not None
    )


def to_self_contained_proto(model: ir.Model) -> onnx.ModelProto:
    """A ModelProto with every external tensor read into it (for ONNX Runtime from bytes).

    ``ir.to_proto`` keeps external references, which dangle once the proto leaves the
    model's folder. Raises :class:`UsageError` when the result would pass 2 GiB.
    """
    if weights_nbytes(model) > PROTOBUF_LIMIT_BYTES:
        raise UsageError(
            "the model's weights are over protobuf's 2 GiB limit for an in-memory model",
            hint="save it with external data and load it from the file",
        )
    return ir.to_proto(_with_tensors_in_memory(model, lambda owner, tensor: True))


def _with_tensors_in_memory(model: ir.Model, wanted: Callable[[TensorOwner, ir.TensorProtocol], bool]) -> ir.Model:
    """``model``, or a clone of it whose external tensors chosen by ``wanted`` are in memory.

    ``wanted(owner, tensor)`` gets the pairs of :func:`iter_tensors`. The model itself is
    left alone: clones share tensors, and releasing a shared one would affect them all.
    """
    def chosen(owner: TensorOwner, tensor: ir.TensorProtocol) -> bool:
        return isinstance(tensor, ir.ExternalTensor) and wanted(owner, tensor)

    if not any(chosen(o, t) for o, t in iter_tensors(model)):
        return model
    clone = model.clone()
    for owner, tensor in list(iter_tensors(clone)):
        if not chosen(owner, tensor):
            continue
        if isinstance(owner, ir.Value):
            owner.const_value = _in_memory(tensor)
            continue
        node, name = owner
        attr = node.attributes[name]
        if attr.type == ir.AttributeType.TENSOR:
            node.attributes[name] = ir.Attr(name, attr.type, _in_memory(tensor))
        else:
            tensors = [_in_memory(t) if chosen(owner, t) else t for t in attr.value]
            node.attributes[name] = ir.Attr(name, attr.type, tensors)
    return clone


def _in_memory(tensor: ir.TensorProtocol) -> ir.Tensor:
    return ir.Tensor(tensor.numpy().copy(), dtype=tensor.dtype, name=tensor.name)


def _pin_tensors_in(model: ir.Model, data_path: Path) -> None:
    """Map ``data_path`` for every external tensor of ``model`` that reads from it.

    Called before ``data_path`` is replaced by a new file: a mapped file outlives its
    replacement (POSIX), so the model and its clones, which share these tensors, keep
    reading their own weights instead of the new file's bytes at the old offsets.
    """
    if not data_path.exists():
        return
    for _, tensor in iter_tensors(model):
        if isinstance(tensor, ir.ExternalTensor):
            try:
                if os.path.samefile(tensor.path, data_path):
                    tensor.numpy()
            except OSError:
                continue


def save_model(
    model: ir.Model, path: str | os.PathLike, *, external_data: bool | None = None
) -> Path:
    """Write ``model`` to ``path`` atomically; weights go to ``<name>.data`` when large.

    ``external_data=None`` decides by size (over 1 GiB of weights); ``True``/``False`` force
    it. With external data, every tensor over 1 KiB goes to ``<file name>.data`` next to
    the model; without, every tensor (external ones included) is written into the file.
    The file and its data file appear only when complete. Returns the model path.
    """
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"cannot save the model to {path}: it is a directory", hint="give a file path such as model.onnx")
    nbytes = weights_nbytes(model)
    if external_data is None:
        external_data = nbytes > EXTERNAL_DATA_THRESHOLD_BYTES
    elif not external_data and nbytes > PROTOBUF_LIMIT_BYTES * 3 // 4:
        raise UsageError(
            f"{nbytes} bytes of weights do not fit in one ONNX file (protobuf's 2 GiB limit)",
            hint="save with external_data=True (or None to decide by size)",
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    if external_data:
        # ir.save rewrites large initializers into the new data file itself; tensors that
        # stay inline (attributes, small initializers) must be read from the old one.
        to_write = _with_tensors_in_memory(
            model,
            lambda owner, tensor: not isinstance(owner, ir.Value)
            or tensor.nbytes <= INLINE_TENSOR_MAX_BYTES,
        )
    else:
        to_write = _with_tensors_in_memory(model, lambda owner, tensor: True)
    staging = Path(tempfile.mkdtemp(prefix=".greencc-save-", dir=path.parent))
    try:
        staged = staging / path.name
        data_name = f"{path.name}.data" if external_data else None
        ir.save(to_write, staged, external_data=data_name, size_threshold_bytes=INLINE_TENSOR_MAX_BYTES)
        if data_name is not None:
            data_path = path.parent / data_name
            _pin_tensors_in(model, data_path)
            staged_data = staging / data_name
            # ir.save creates the file even when no tensor is large enough to go there.
            if staged_data.exists() and staged_data.stat().st_size > 0:
                os.replace(staged_data, data_path)
        os.replace(staged, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return path
