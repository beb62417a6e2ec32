"""The converter table: one torch function per ONNX op (by domain and op type).

A converter takes the node's inputs (torch tensors, ``None`` for an absent optional input,
or Python ints / int lists for the inputs it declares as ``int_inputs``) and the node's
attributes as keyword arguments (and ``outputs=``, the node's output count, when it takes one), and
returns a tensor or a tuple of tensors (one per output).
Converters run eagerly (training, ``LoweredModule.run``) and under ``torch.export`` tracing
(the torch-inductor target), so they branch on shapes and attributes, never on tensor values.

An op may also have a ``shape_fn``: the same op on Python ints and int lists, used when its
inputs are shape arithmetic (``Shape -> Gather -> Concat -> Reshape``), which keeps symbolic
dims symbolic under ``torch.export`` instead of turning them into data-dependent tensors.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

CONTRIB = "com.microsoft"
STANDARD_DOMAINS = ("", "ai.onnx")

Converter = Callable[..., Any]


@dataclass(frozen=True)
class OpConverter:
    """How one ONNX op is lowered: ``fn`` (on tensors), the input positions it wants as
    Python ints / int lists (``int_inputs``), and optionally ``shape_fn`` (on ints)."""

    fn: Converter
    int_inputs: frozenset[int] = frozenset()
    shape_fn: Converter | None = None

    @property
    def takes_output_count(self) -> bool:
        """Whether ``fn`` takes ``outputs=`` (how many outputs the node has)."""
        return "outputs" in inspect.signature(self.fn).parameters


_CONVERTERS: dict[tuple[str, str], OpConverter] = {}


def _domain(domain: str) -> str:
    return "" if domain in STANDARD_DOMAINS else domain


def converts(*op_types: str, domain: str = "", int_inputs: tuple[int, ...] = (),
             shape_fn: Converter | None = None) -> Callable[[Converter], Converter]:
    """Register the decorated function as the converter of ``op_types`` in ``domain``."""

    def register(fn: Converter) -> Converter:
        for op_type in op_types:
            _CONVERTERS[(_domain(domain), op_type)] = OpConverter(fn, frozenset(int_inputs), shape_fn)
        return fn

    return register


def shape_function(*op_types: str, domain: str = "") -> Callable[[Converter], Converter]:
    """Attach the decorated function as the int-arithmetic form of already registered ops."""

    def register(fn: Converter) -> Converter:
        for op_type in op_types:
            key = (_domain(domain), op_type)
            current = _CONVERTERS[key]
            _CONVERTERS[key] = OpConverter(current.fn, current.int_inputs, fn)
        return fn

    return register


def lookup(domain: str, op_type: str) -> OpConverter | None:
    """The converter of ``op_type`` in ``domain``, or None when greencc cannot lower it."""
    return _CONVERTERS.get((_domain(domain), op_type))


def supported_ops() -> list[str]:
    """Every op greencc lowers to torch, as ``domain::op`` (``op`` for standard ONNX)."""
    return sorted(f"{domain}::{op}" if domain else op for domain, op in _CONVERTERS)
