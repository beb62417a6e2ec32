"""The compiled variants one service holds: each artifact with its name, its fidelity
against the original model and its energy per inference, both read from the artifact's
report (``report.json``), so a policy can rank variants without measuring them first.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from greencc.errors import UsageError
from greencc.model import DecoderSpec
from greencc.target.artifact import CompiledModel


@dataclass(frozen=True)
class Variant:
    """One compiled model in a service.

    ``fidelity``: the lowest cosine similarity to the original model's outputs over the
    passes of its compile (1.0 when no pass changed the outputs); ``energy_mj``: its
    energy per inference (mJ) from the report, measured where the compile measured, else
    the cost model's estimate (``energy_label`` says which); ``None`` without a report.
    """

    name: str
    compiled: CompiledModel
    fidelity: float
    energy_mj: float | None
    energy_label: str
    source: str = ""

    @property
    def is_decoder(self) -> bool:
        """Whether the variant generates (it has a KV-cache decoder signature)."""
        return DecoderSpec.of(self.compiled.model) is not None


def report_fidelity(report: Any) -> float:
    """The lowest ``cosine_min`` any verified pass of ``report`` recorded (1.0 when none)."""
    if report is None:
        return 1.0
    values = [row.fidelity.get("cosine_min") for row in report.rows if row.fidelity]
    values = [float(v) for v in values if v is not None]
    return min(values, default=1.0)


def report_energy(report: Any) -> tuple[float | None, str]:
    """(mJ per inference of the compiled model, its label) from ``report``: the measured
    figure where the compile measured energy, else the final row's cost-model estimate."""
    if report is None:
        return None, "no report"
    measured = getattr(report, "measured_energy", None)
    if measured and measured.get("mj_per_inference") is not None:
        return float(measured["mj_per_inference"]), str(measured.get("label", "measured"))
    final = report.final
    if final is not None and final.est_energy_mj is not None:
        return float(final.est_energy_mj), str(final.energy_method or report.energy_method)
    return None, "no energy figure in the report"


def variant_from(compiled: CompiledModel, name: str, source: str = "") -> Variant:
    """A :class:`Variant` of ``compiled``, its fidelity and energy read from its report."""
    energy, label = report_energy(compiled.report)
    return Variant(name=name, compiled=compiled, fidelity=report_fidelity(compiled.report),
                   energy_mj=energy, energy_label=label, source=source)


def parse_variant_spec(spec: str) -> tuple[str, str]:
    """``NAME=PATH`` or ``PATH`` (named after the directory) -> (name, path)."""
    name, sep, path = spec.partition("=")
    if not sep:
        path, name = spec, Path(spec.rstrip("/")).name
    if not name or not path:
        raise UsageError(f"variant {spec!r} must be PATH or NAME=PATH", hint="e.g. green=out-green/")
    return name, path


def load_variants(specs: list[str], threads: int | None = None) -> list[Variant]:
    """Load every artifact of ``specs`` (``NAME=PATH`` or ``PATH``); all must share one
    input signature (they are variants of one model) and have distinct names."""
    if not specs:
        raise UsageError("serve needs at least one artifact", hint="greencc serve out/")
    variants: list[Variant] = []
    for spec in specs:
        name, path = parse_variant_spec(spec)
        if any(v.name == name for v in variants):
            raise UsageError(f"two variants are named {name!r}", hint="name them: NAME=PATH")
        options = {"threads": threads} if threads is not None else {}
        compiled = CompiledModel.load(path, **options)
        variants.append(variant_from(compiled, name, source=str(path)))
    first = variants[0]
    for other in variants[1:]:
        if other.compiled.signature["inputs"] != first.compiled.signature["inputs"]:
            raise UsageError(
                f"variant {other.name!r} takes other inputs than {first.name!r}",
                hint="serve variants of one model together, or start one service per model",
            )
    return variants


__all__ = ["Variant", "load_variants", "parse_variant_spec", "report_energy", "report_fidelity", "variant_from"]
