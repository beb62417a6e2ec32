"""Several batch sizes for a target that compiles static shapes: the ``batches`` option
(``--target-option batches=1,8``) builds one module per batch size, and
:class:`BatchDispatchModel` runs each call on the module of its batch; any other size is
refused with an error naming the compiled ones.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx_ir as ir

from greencc.errors import InputMismatchError, UsageError
from greencc.target import CompiledModel

if TYPE_CHECKING:
    from greencc.model import Model

# Which axes of each input and output carry the batch: {"inputs": {name: [axis, ...]}, ...}.
BatchAxes = dict[str, dict[str, list[int]]]


def parse_batches(value: Any, label: str) -> list[int] | None:
    """The ``batches`` option as sorted distinct sizes: ``None``, an int, ``"1,8"`` or a list
    of ints; ``UsageError`` for anything else or a size below 1."""
    if value is None:
        return None
    items: Sequence[Any]
    if isinstance(value, str):
        items = [part.strip() for part in value.split(",") if part.strip()]
    elif isinstance(value, (list, tuple)):
        items = value
    else:
        items = [value]
    sizes = []
    for item in items:
        try:
            if isinstance(item, bool) or (isinstance(item, float) and not item.is_integer()):
                raise ValueError
            size = int(item)
        except (TypeError, ValueError):
            size = 0
        if size < 1:
            raise UsageError(f"{label}: batches={value!r} must list batch sizes >= 1",
                             hint="e.g. --target-option batches=1,8")
        sizes.append(size)
    if not sizes:
        raise UsageError(f"{label}: batches={value!r} lists no batch size", hint="e.g. --target-option batches=1,8")
    return sorted(set(sizes))


def batch_dim(model: Model, label: str) -> str:
    """The symbolic dim every input of ``model`` leads with (its batch); ``UsageError``
    naming the inputs when there is none."""
    leading = {spec.shape[0] if spec.shape else None for spec in model.inputs}
    names = {dim for dim in leading if isinstance(dim, str) and dim}
    if len(leading) != 1 or len(names) != 1:
        signature = ", ".join(str(spec) for spec in model.inputs)
        raise UsageError(f"{label}: batches=... needs inputs that all lead with one symbolic batch dim; "
                         f"this model's are {signature}",
                         hint="export the model with a dynamic batch axis, or compile once per batch with --dim")
    return names.pop()


def batch_axes(model: Model, dim: str) -> BatchAxes:
    """The axes of ``model``'s inputs and outputs that are the symbolic dim ``dim``."""
    return {
        side: {spec.name: [i for i, d in enumerate(spec.shape or ()) if d == dim] for spec in specs}
        for side, specs in (("inputs", model.inputs), ("outputs", model.outputs))
    }


def signature_model(static: Model, dim: str, axes: BatchAxes) -> Model:
    """A clone of one batch's static ``model`` whose inputs and outputs show the batch as
    the symbolic ``dim`` at ``axes`` (the signature of all batches together)."""
    signature = static.clone()
    graph = signature.ir.graph
    for side, values in (("inputs", graph.inputs), ("outputs", graph.outputs)):
        for value in values:
            marked = axes[side].get(value.name or "", [])
            if value.shape is not None and marked:
                value.shape = ir.Shape([dim if i in marked else d for i, d in enumerate(value.shape)])
    return signature


class BatchDispatchModel(CompiledModel):
    """One compiled module per batch size (``variants``: batch -> a compiled model of that
    batch), run by the batch of each call: the ``dim`` leading every input. ``model`` is
    the signature of them all (the batch symbolic, every other dim as compiled)."""

    def __init__(self, target: str, model: Model, variants: Mapping[int, CompiledModel], *, dim: str,
                 axes: BatchAxes, options: Mapping[str, Any], profile_name: str | None = None) -> None:
        super().__init__(target, model, options=options, profile_name=profile_name)
        self.variants = dict(sorted(variants.items()))
        self.dim = dim
        self.axes = axes

    @property
    def batches(self) -> list[int]:
        """The batch sizes compiled, ascending."""
        return list(self.variants)

    @property
    def dynamic_dims(self) -> list[str]:
        """None: the batch takes only the sizes in :attr:`accepted_sizes`."""
        return []

    @property
    def accepted_sizes(self) -> dict[str, list[int]]:
        """``{batch dim: the batch sizes compiled}``."""
        return {self.dim: self.batches}

    def check_feeds(self, feeds: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """Validate ``feeds`` against the signature, then against the module of their batch;
        ``InputMismatchError`` naming the compiled batches for any other size."""
        arrays = super().check_feeds(feeds)
        return self._variant(arrays).check_feeds(arrays)

    def _variant(self, arrays: Mapping[str, np.ndarray]) -> CompiledModel:
        first = self.model.inputs[0].name
        batch = int(np.shape(arrays[first])[0])
        variant = self.variants.get(batch)
        if variant is None:
            listed = ", ".join(map(str, self.batches))
            raise InputMismatchError(
                f"batch {batch} was not compiled: this '{self.target}' artifact runs {self.dim} = {listed} only",
                hint=f"pad or split the batch to one of those sizes, or compile again with "
                f"--target-option batches={listed},{batch}",
            )
        return variant

    def _run(self, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self._variant(arrays)._run(arrays)

    def with_options(self, **options: Any) -> BatchDispatchModel:
        """A copy whose every module runs with the changed options (e.g. ``threads``)."""
        variants = {batch: variant.with_options(**options) for batch, variant in self.variants.items()}
        first = next(iter(variants.values()))
        copy = type(self)(self.target, self.model, variants, dim=self.dim, axes=self.axes,
                          options={**first.options, "batches": self.batches}, profile_name=self.profile_name)
        copy.dims = dict(self.dims)
        return copy


__all__ = ["BatchDispatchModel", "batch_axes", "batch_dim", "parse_batches", "signature_model"]
