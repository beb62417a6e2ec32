"""The PyTorch frontend: ``greencc.from_torch`` through ``torch.onnx.export``.

The dynamo exporter is tried first (it keeps torch stack traces and module scopes as node
metadata, which greencc uses for provenance); the legacy TorchScript exporter is the
fallback, and the model's provenance records which one ran and why.
"""

from __future__ import annotations

import inspect
import io
import logging
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from greencc.errors import ExportError, UsageError
from greencc.frontend.decoder import export_decoder, is_causal_lm
from greencc.frontend.exporter_output import exception_summary, quiet_exporters
from greencc.ir.io import check_model, load_model
from greencc.model import Model, Provenance

log = logging.getLogger(__name__)

Exporter = Literal["auto", "dynamo", "legacy"]
EXPORTERS = ("auto", "dynamo", "legacy")
# The legacy exporter's opset when none is asked for (the dynamo exporter picks its own).
LEGACY_DEFAULT_OPSET = 17


def from_torch(
    module: Any,
    example_inputs: Any = None,
    *,
    dynamic_shapes: Mapping[str, Mapping[int, str]] | None = None,
    input_names: Sequence[str] | None = None,
    output_names: Sequence[str] | None = None,
    exporter: Exporter = "auto",
    opset: int | None = None,
    verbose: bool = False,
) -> Model:
    """Trace a ``torch.nn.Module`` to a greencc ``Model`` with ``torch.onnx.export``.

    ``example_inputs`` is a tensor, a tuple of tensors (positional) or a dict (keyword
    arguments). ``dynamic_shapes`` maps an input name to ``{axis: dim_name}``, e.g.
    ``{"input_ids": {0: "batch", 1: "seq"}}``; the names become the symbolic dims of
    ``model.inputs``. ``exporter="auto"`` tries dynamo, then the legacy exporter, and
    records in ``model.provenance`` which one ran and why the other did not. The
    exporters' prints, warnings and log records are silenced unless ``verbose``.

    A transformers causal LM given without ``example_inputs`` becomes the decoder graph
    with a KV cache (see :mod:`greencc.frontend.decoder`); with example inputs it is traced
    as any other module.

    Raises :class:`UsageError` for bad arguments and :class:`ExportError` listing each
    exporter's failure.
    """
    try:
        import torch
    except ImportError:
        raise UsageError(
            "from_torch needs PyTorch", hint="pip install 'greencc[torch]' (CPU: torch==2.13.0)"
        ) from None
    if not isinstance(module, torch.nn.Module):
        hint = "pass the nn.Module itself"
        if isinstance(module, (str, bytes)) or hasattr(module, "__fspath__"):
            hint = "for an ONNX file use greencc.load(path)"
        raise UsageError(
            f"from_torch expects a torch.nn.Module, got {type(module).__name__}", hint=hint
        )
    if example_inputs is None:
        if is_causal_lm(module):
            return export_decoder(module, opset=opset, verbose=verbose)
        raise UsageError(
            f"from_torch needs example_inputs for {type(module).__name__}",
            hint="pass a tensor, a tuple of tensors or a dict of keyword arguments",
        )
    if exporter not in EXPORTERS:
        raise UsageError(f"unknown exporter '{exporter}'", hint="use 'auto', 'dynamo' or 'legacy'")
    args, kwargs = _split_inputs(example_inputs)
    names = list(input_names) if input_names else _argument_names(module, args, kwargs)
    if len(names) != len(args) + len(kwargs):
        raise UsageError(
            f"{len(names)} input names for {len(args) + len(kwargs)} example inputs",
            hint="give one name per example input",
        )
    dynamic = _check_dynamic_shapes(dynamic_shapes, names, args, kwargs)
    was_training = module.training
    module.eval()
    attempts = ["dynamo", "legacy"] if exporter == "auto" else [exporter]
    failures: list[str] = []
    try:
        for attempt in attempts:
            try:
                with torch.no_grad(), quiet_exporters(enabled=not verbose):
                    export = _export_dynamo if attempt == "dynamo" else _export_legacy
                    ir_model = export(module, args, kwargs, names, output_names, dynamic, opset)
                check_model(ir_model, f"the {attempt} export of {type(module).__name__}")
            except Exception as exc:  # exporters raise many unrelated types
                reason = f"{attempt} exporter failed: {exception_summary(exc)}"
                log.info(reason)
                failures.append(reason)
                continue
            notes = list(failures)
            if failures:
                notes.append(f"fell back to the {attempt} exporter")
            provenance = Provenance(
                source=f"torch:{type(module).__module__}.{type(module).__qualname__}",
                exporter=attempt,
                options={
                    "requested_exporter": exporter,
                    "torch": torch.__version__,
                    "input_names": names,
                    "output_names": list(output_names or []),
                    "dynamic_shapes": {k: dict(v) for k, v in dynamic.items()},
                    "example_dims": _example_dims(dynamic, names, [*args, *kwargs.values()]),
                    "opset": opset if opset is not None else _default_opset(ir_model),
                },
                notes=notes,
            )
            return Model(ir_model, provenance)
    finally:
        module.train(was_training)
    raise ExportError(
        f"could not export {type(module).__name__} to ONNX: " + "; ".join(failures),
        hint="try exporter='legacy' or 'dynamo' explicitly, verbose=True to see the "
        "exporters' output, or simplify the forward()",
    )


def _example_dims(dynamic: Mapping[str, Mapping[int, str]], names: list[str], tensors: list[Any]) -> dict[str, int]:
    """Each dynamic dim's size in the example inputs: the shape the model is priced and
    run at unless the caller binds another."""
    sizes: dict[str, int] = {}
    for name, tensor in zip(names, tensors, strict=True):
        shape = getattr(tensor, "shape", None)
        for axis, dim in dynamic.get(name, {}).items():
            if shape is not None and axis < len(shape):
                sizes.setdefault(dim, int(shape[axis]))
    return sizes


def _default_opset(ir_model: Any) -> int | None:
    return ir_model.opset_imports.get("", None)


def _split_inputs(example_inputs: Any) -> tuple[tuple, dict]:
    if isinstance(example_inputs, Mapping):
        return (), dict(example_inputs)
    if isinstance(example_inputs, (tuple, list)):
        return tuple(example_inputs), {}
    return (example_inputs,), {}


def _argument_names(module: Any, args: tuple, kwargs: dict) -> list[str]:
    params = [
        p.name
        for p in inspect.signature(module.forward).parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    positional = params[: len(args)]
    positional += [f"input_{i}" for i in range(len(positional), len(args))]
    return positional + list(kwargs)


def _check_dynamic_shapes(
    dynamic_shapes: Mapping[str, Mapping[int, str]] | None,
    names: list[str],
    args: tuple,
    kwargs: dict,
) -> dict[str, dict[int, str]]:
    """Validate ``dynamic_shapes`` against the inputs; returns ``{name: {axis: dim}}``."""
    if not dynamic_shapes:
        return {}
    if not isinstance(dynamic_shapes, Mapping):
        raise UsageError(
            "dynamic_shapes must map input names to {axis: dim_name}",
            hint="e.g. dynamic_shapes={'input_ids': {0: 'batch', 1: 'seq'}}",
        )
    ranks = {name: getattr(value, "ndim", None) for name, value in zip(names, [*args, *kwargs.values()], strict=True)}
    checked: dict[str, dict[int, str]] = {}
    for name, axes in dynamic_shapes.items():
        if name not in ranks:
            raise UsageError(
                f"dynamic_shapes names an unknown input '{name}'",
                hint=f"the inputs are {', '.join(names)}",
            )
        if not isinstance(axes, Mapping):
            raise UsageError(
                f"dynamic_shapes['{name}'] must map axes to dim names, got {type(axes).__name__}",
                hint="e.g. {0: 'batch', 1: 'seq'}",
            )
        checked[name] = {}
        for axis, dim in axes.items():
            rank = ranks[name]
            if not isinstance(axis, int) or (rank is not None and not -rank <= axis < rank):
                raise UsageError(f"dynamic_shapes['{name}'] has a bad axis {axis!r} (rank {rank})")
            if not isinstance(dim, str) or not dim.isidentifier():
                raise UsageError(
                    f"dynamic_shapes['{name}'][{axis}] must be a dim name such as 'batch', got {dim!r}"
                )
            checked[name][axis % rank if rank else axis] = dim
    return checked


def _export_dynamo(module, args, kwargs, names, output_names, dynamic, opset):
    import torch

    shapes = None
    if dynamic:
        # Keyed by forward() argument name, as torch.export wants; one Dim object per name
        # so that equal names are one symbol.
        dims = {dim: torch.export.Dim(dim) for axes in dynamic.values() for dim in axes.values()}
        shapes = {name: {axis: dims[d] for axis, d in dynamic.get(name, {}).items()} or None for name in names}
        if args and not kwargs:
            shapes = tuple(shapes[name] for name in names)
    program = torch.onnx.export(
        module,
        args,
        kwargs=kwargs or None,
        dynamo=True,
        input_names=names,
        output_names=list(output_names) if output_names else None,
        dynamic_shapes=shapes,
        opset_version=opset,
        verbose=False,
        external_data=False,
    )
    model = program.model
    _name_dims(model, dynamic)
    return model


def _name_dims(model: Any, dynamic: Mapping[str, Mapping[int, str]]) -> None:
    """Give the graph inputs the dim names the caller chose (exporters may rename them)."""
    import onnx_ir as ir

    renames: dict[str, str] = {}
    for value in model.graph.inputs:
        axes = dynamic.get(value.name, {})
        if value.shape is None:
            continue
        for axis, want in axes.items():
            if axis < len(value.shape):
                have = value.shape[axis]
                if not isinstance(have, int) and have.value and have.value != want:
                    renames[have.value] = want
    if not renames:
        return
    for graph in model.graphs():
        values = [*graph.inputs, *graph.outputs, *(out for node in graph for out in node.outputs)]
        for value in values:
            if value.shape is None:
                continue
            dims = [
                ir.SymbolicDim(renames.get(d.value, d.value)) if not isinstance(d, int) else d
                for d in value.shape
            ]
            value.shape = ir.Shape(dims)


def _export_legacy(module, args, kwargs, names, output_names, dynamic, opset):
    import torch

    buffer = io.BytesIO()
    all_args = args + ((kwargs,) if kwargs else ())
    torch.onnx.export(
        module,
        all_args,
        buffer,
        dynamo=False,
        input_names=names,
        output_names=list(output_names) if output_names else None,
        dynamic_axes={k: dict(v) for k, v in dynamic.items()} if dynamic else None,
        opset_version=opset or LEGACY_DEFAULT_OPSET,
        do_constant_folding=True,
    )
    return load_model(buffer.getvalue())
