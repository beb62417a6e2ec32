"""The search space: which compiles a search may try. Presets, one pipeline template whose
pass options each take one of a few values, threads and targets; a default space per model
kind (encoders prune and quantize to int8, decoders move weights to int4/int8 blocks) and
a user space file (TOML). A point of the space is a :class:`~greencc.config.CompileConfig`.
"""

from __future__ import annotations

import dataclasses
import itertools
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from greencc.config import CompileConfig
from greencc.errors import UsageError
from greencc.pipeline.base import registered_passes
from greencc.pipeline.text import Pipeline

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 reads TOML with the backport
    import tomli as tomllib

# The choice that selects the template rather than a preset.
TEMPLATE = "template"
# A template pass whose `enabled` is false, or whose ratio or share is 0, is left out of the
# pipeline: prune-heads without ratio/count/budget would otherwise prune to the run's budget.
ENABLED = "enabled"
_DROPPING_ZERO = ("ratio", "share")

Params = dict[str, Any]


@dataclass(frozen=True)
class SearchSpace:
    """What a search may vary.

    ``presets`` are whole pipelines (``-O2``, ``green``); ``template`` is pipeline text
    whose passes take the values listed in ``options`` (``{"prune-heads": {"ratio": [0,
    0.25]}}``; an ``enabled`` list turns a pass on and off, a ratio or share of 0 drops it).
    ``threads`` are the compiled model's intra-op thread counts and ``targets`` the target
    or tag names tried. A parameter of a point is named ``pipeline``, ``threads``,
    ``target`` or ``PASS.OPTION``.
    """

    presets: tuple[str, ...] = ("-O2", "-O3", "green")
    template: str = ""
    options: Mapping[str, Mapping[str, tuple[Any, ...]]] = field(default_factory=dict)
    threads: tuple[int | None, ...] = (None,)
    targets: tuple[str, ...] = ("ort-cpu",)

    def __post_init__(self) -> None:
        if not self.presets and not self.template:
            raise UsageError("the search space has no preset and no template",
                             hint="give presets = [...] or a pipeline template in the space file")
        template_passes = [spec.name for spec in Pipeline.parse(self.template).items] if self.template else []
        for name, choices in self.options.items():
            if name not in template_passes:
                raise UsageError(f"the search space has options for '{name}', which its template lacks",
                                 hint=f"the template's passes are: {', '.join(template_passes) or 'none'}")
            for option, values in choices.items():
                if not isinstance(values, (list, tuple)) or not values:
                    raise UsageError(f"search space option {name}.{option} = {values!r} is not a list of values",
                                     hint=f'write it as {option} = [value, ...] under [options."{name}"]')
        for preset in self.presets:
            Pipeline.parse(preset)  # a bad preset or pipeline text fails before any work
        if not self.targets or not self.threads:
            raise UsageError("the search space needs at least one target and one thread count")

    # -- the parameters ------------------------------------------------------------------
    def choices(self) -> dict[str, tuple[Any, ...]]:
        """Every parameter with its values; ``PASS.OPTION`` ones apply to the template only."""
        found: dict[str, tuple[Any, ...]] = {
            "pipeline": (*self.presets, *((TEMPLATE,) if self.template else ())),
            "threads": tuple(self.threads),
            "target": tuple(self.targets),
        }
        for name, options in self.options.items():
            for option, values in options.items():
                found[f"{name}.{option}"] = tuple(values)
        return found

    def grid(self) -> Iterator[Params]:
        """Every point of the space, presets first, in a fixed order (the grid strategy)."""
        choices = self.choices()
        shared = [(key, choices[key]) for key in ("target", "threads")]
        template_keys = [key for key in choices if "." in key]
        for pipeline in choices["pipeline"]:
            keys = [k for k, _ in shared] + (template_keys if pipeline == TEMPLATE else [])
            values = [v for _, v in shared] + ([choices[k] for k in template_keys] if pipeline == TEMPLATE else [])
            for combination in itertools.product(*values):
                yield {"pipeline": pipeline, **dict(zip(keys, combination, strict=True))}

    def size(self) -> int:
        """The number of points (parameter combinations; several may compile alike)."""
        return sum(1 for _ in self.grid())

    # -- a point as a compile ------------------------------------------------------------
    def pipeline_text(self, params: Mapping[str, Any]) -> str:
        """The pipeline a point compiles with: a preset, or the template with its options."""
        if params["pipeline"] != TEMPLATE:
            return str(params["pipeline"])
        items: list[str] = []
        for spec in Pipeline.parse(self.template).items:
            chosen = {key.split(".", 1)[1]: value for key, value in params.items()
                      if key.split(".", 1)[0] == spec.name and "." in key}
            if not chosen.pop(ENABLED, True):
                continue
            if any(chosen.get(option) in (0, 0.0) for option in _DROPPING_ZERO if option in chosen):
                continue
            written = {**dict(spec.options), **{k: _text(v) for k, v in chosen.items()}}
            items.append(spec.name + ("{" + ",".join(f"{k}={v}" for k, v in written.items()) + "}" if written else ""))
        return str(Pipeline.parse(",".join(items))) if items else ""

    def config(self, params: Mapping[str, Any], base: CompileConfig) -> CompileConfig:
        """The :class:`CompileConfig` of a point: ``base`` (model, budget, dims, seed, ...)
        with the point's pipeline, target and threads."""
        return dataclasses.replace(base, pipeline=self.pipeline_text(params), target=str(params["target"]),
                                   threads=params["threads"])

    def to_dict(self) -> dict[str, Any]:
        """The space as JSON-safe values (recorded in the search store)."""
        return {"presets": list(self.presets), "template": self.template,
                "options": {k: {o: list(v) for o, v in opts.items()} for k, opts in self.options.items()},
                "threads": list(self.threads), "targets": list(self.targets)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SearchSpace:
        """A space from :meth:`to_dict` output or a space file's tables; ``UsageError`` for
        an unknown key."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise UsageError(f"the search space has no field {unknown[0]!r}",
                             hint=f"its fields are: {', '.join(sorted(known))}")
        values = dict(data)
        for name in ("presets", "threads", "targets"):
            if name in values:
                raw = values[name]
                values[name] = tuple(raw) if isinstance(raw, (list, tuple)) else (raw,)
        if "threads" in values:
            values["threads"] = tuple(None if t in (0, "auto") else t for t in values["threads"])
        if "options" in values:
            values["options"] = {name: {o: tuple(v) if isinstance(v, (list, tuple)) else v for o, v in opts.items()}
                                 for name, opts in dict(values["options"]).items()}
        return cls(**values)

    @classmethod
    def from_toml(cls, path: str | Path) -> SearchSpace:
        """Read a space file: top-level ``presets``, ``template``, ``threads`` (0 for the
        target's default), ``targets``, and one ``[options."PASS"]`` table per template
        pass (README, section Search)."""
        path = Path(path)
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise UsageError(f"search space file {path} does not exist") from None
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise UsageError(f"search space file {path} is not readable TOML: {exc}") from None
        try:
            return cls.from_dict(data)
        except UsageError as exc:
            raise UsageError(f"search space file {path}: {exc.message}", hint=exc.hint) from None


def store_key(config: CompileConfig) -> str:
    """The search store's key of a candidate: its config's digest with presets expanded
    into their passes, so ``-O2`` and ``cleanup,fuse,dce`` are one candidate, and a preset
    a newer greencc defines otherwise is compiled again."""
    return dataclasses.replace(config, pipeline=str(Pipeline.parse(config.pipeline))).digest


def default_space(decoder: bool, *, targets: Sequence[str] = ("ort-cpu",),
                  threads: Sequence[int | None] = (None,), calibrated: bool = False) -> SearchSpace:
    """The default space of a model kind. Encoders and vision models: ``-O2``, ``-O3``,
    ``green`` and a template that prunes heads and FFN neurons (ratios 0–0.5, or shares
    of the fidelity budget) and quantizes to int8 (outlier split or not); with calibration
    data (``calibrated``) it also recovers (when a ``recover`` pass is registered) and
    tries static int8 calibrated by minmax or entropy. Without, those options cannot
    change the compile: static int8 refuses to run, ``recover`` declines and the
    calibration method is unused by dynamic int8 (on MiniLM, 11 of a grid's first 21
    candidates were such repeats or refusals). Decoders: the presets and a weight-only
    template (4 or 8 bits, blocks of 32 to 128, RTN or GPTQ) followed by optional int8."""
    if decoder:
        template = "cleanup,fuse,dce,quantize-weights{fallback=sensitivity},quantize-int8{fallback=sensitivity}"
        options: dict[str, dict[str, tuple[Any, ...]]] = {
            "quantize-weights": {"bits": (4, 8), "block": (32, 64, 128), "method": ("rtn", "gptq")},
            "quantize-int8": {ENABLED: (False, True)},
        }
    else:
        recover = calibrated and "recover" in registered_passes()
        template = ("cleanup,prune-heads,prune-ffn," + ("recover," if recover else "")
                    + "fuse,dce,quantize-int8{fallback=sensitivity}")
        int8: dict[str, tuple[Any, ...]] = {ENABLED: (False, True), "outlier_ratio": (0, 20)}
        if calibrated:
            int8 = {**int8, "mode": ("dynamic", "static"), "method": ("minmax", "entropy")}
        options = {
            "prune-heads": {"ratio": (0.0, 0.125, 0.25, 0.375, 0.5)},
            "prune-ffn": {"share": (0.0, 0.2, 0.45, 0.7)},
            "quantize-int8": int8,
        }
        if recover:
            options["recover"] = {ENABLED: (False, True)}
    return SearchSpace(presets=("-O2", "-O3", "green"), template=template, options=options,
                       threads=tuple(threads), targets=tuple(targets))


def _text(value: Any) -> str:
    """A choice as pipeline option text (booleans as true/false)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)

