"""The target base: ``Target`` (what a backend implements), ``Availability`` and
``Partition`` (which nodes a target claims, grouped in graph order).

A target claims the nodes it can run (as ONNX Runtime's execution providers do), names
the passes it needs before lowering, and lowers a ``Model`` into a ``CompiledModel``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple

from greencc.config import check_threads
from greencc.cost.profile import HardwareProfile
from greencc.errors import TargetUnavailableError, UsageError

if TYPE_CHECKING:
    import onnx_ir as ir

    from greencc.cost.profile import HardwareProfile
    from greencc.model import Model
    from greencc.pipeline.context import PassContext
    from greencc.target.artifact import CompiledModel

# Unclaimed nodes of a target other than ort-cpu run here (visibly, in the report).
FALLBACK_TARGET = "ort-cpu"
FALLBACK_PREFIX = "fallback:"
# The partition label of nodes that no target here can run.
UNSUPPORTED = "unsupported"


class Availability(NamedTuple):
    """Whether a target can run on this machine, and why not when it cannot.

    Truthiness follows ``ok`` (a plain 2-tuple would always be true).
    """

    ok: bool
    reason: str = ""

    def __bool__(self) -> bool:
        return bool(self.ok)


@dataclass
class Partition:
    """A run of nodes (by name, in graph order) assigned to one target.

    ``target`` is the claiming target's name, ``"fallback:ort-cpu"`` for nodes another
    target leaves to ONNX Runtime, or ``"unsupported"`` for nodes nothing here runs;
    ``reason`` says why an unclaimed partition was not claimed.
    """

    target: str
    nodes: list[str]
    reason: str = ""

    @property
    def claimed(self) -> bool:
        """True when the target that was asked runs these nodes itself."""
        return not (self.target.startswith(FALLBACK_PREFIX) or self.target == UNSUPPORTED)


def node_id(node: ir.Node, index: int) -> str:
    """A node's name, or ``<Op#index>`` for an unnamed node (index = position in graph)."""
    return node.name or f"<{node.op_type}#{index}>"


def group_partitions(verdicts: Iterable[tuple[str, str, str]]) -> list[Partition]:
    """Group ``(node_id, target, reason)`` in graph order into maximal runs per target.

    The reasons of a run's nodes are joined (distinct ones, in order of appearance).
    """
    partitions: list[Partition] = []
    reasons: list[list[str]] = []
    for name, target, reason in verdicts:
        if not partitions or partitions[-1].target != target:
            partitions.append(Partition(target, []))
            reasons.append([])
        partitions[-1].nodes.append(name)
        if reason and reason not in reasons[-1]:
            reasons[-1].append(reason)
    for partition, why in zip(partitions, reasons, strict=True):
        partition.reason = "; ".join(why)
    return partitions


class Target:
    """Base class of every target.

    Subclasses are registered with ``@register_target("kebab-name")``, set
    ``description``, ``profile_name`` (the default hardware profile), ``default_options``
    (every option the target accepts, with its default) and ``compiled_model_class``, and
    implement ``available``, ``capability`` and ``lower``. ``check_options`` may be
    overridden to validate and normalise option values (call ``super()`` first).
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    profile_name: ClassVar[str] = ""
    default_options: ClassVar[dict[str, Any]] = {}
    compiled_model_class: ClassVar[type[CompiledModel]]

    def __init__(self, *, profile: HardwareProfile | str | None = None, **options: Any) -> None:
        self.options: dict[str, Any] = self.check_options(options)
        self._profile: HardwareProfile | None = None
        self._profile_name = type(self).profile_name
        if isinstance(profile, str):
            self._profile_name = profile
        elif profile is not None:
            self._profile = profile
            self._profile_name = getattr(profile, "name", self._profile_name)
        pinned = getattr(type(self), "profile", None)
        if not isinstance(pinned, property):
            # A subclass that pins `profile` as a class attribute (as in DESIGN §6) stays
            # overridable per instance, as this constructor promises.
            if profile is None:
                self._profile_name = getattr(pinned, "name", self._profile_name)
            else:
                vars(self)["profile"] = self.profile_by_name(profile) if isinstance(profile, str) else profile

    @property
    def profile(self) -> HardwareProfile:
        """The hardware profile cost estimates use (loaded on first use by name)."""
        if self._profile is None:
            self._profile = self.profile_by_name(self._profile_name)
        return self._profile

    @staticmethod
    def profile_by_name(name: str) -> HardwareProfile:
        """Load the named hardware profile (``targets/profiles/<name>.json``), or the one
        in the JSON file ``name`` when it ends in ``.json`` (``--profile my-cpu.json``)."""
        if name.endswith(".json"):
            return HardwareProfile.from_json(name)
        return HardwareProfile.named(name)

    @property
    def selected_profile_name(self) -> str:
        """The name of the profile this target uses, without loading it."""
        return self._profile_name

    def check_options(self, options: Mapping[str, Any]) -> dict[str, Any]:
        """Reject unknown options and a ``threads`` outside [1, cores x 4] (``UsageError``),
        and fill in defaults."""
        label = self.name or type(self).__name__
        for key in options:
            if key not in self.default_options:
                known = ", ".join(self.default_options) or "none"
                raise UsageError(
                    f"target '{label}' has no option '{key}'", hint=f"its options are: {known}"
                )
        checked = {**self.default_options, **options}
        if checked.get("threads") is not None:
            checked["threads"] = check_threads(checked["threads"], f"target '{label}': threads")
        return checked

    def available(self) -> Availability:
        """Whether this target can run here (never raises)."""
        return Availability(True)

    def capability(self, model: Model) -> list[Partition]:
        """The nodes this target claims, as partitions in graph order."""
        raise NotImplementedError(f"target '{self.name}' does not implement capability()")

    def legalize(self) -> list[str]:
        """Names of the passes the target needs before ``lower`` (run by the driver)."""
        return []

    def supported_fused_ops(self) -> set[str]:
        """Fused op types it runs natively, as ``"domain::Op"`` (fusion passes consult it)."""
        return set()

    def slower_fused_ops(self) -> dict[str, str]:
        """Fused op types it runs, but slower than the unfused ops they replace, as
        ``{"domain::Op": why}`` (fusions that can leave the unfused form consult it)."""
        return {}

    def lower(self, model: Model, ctx: PassContext | None = None) -> CompiledModel:
        """Turn ``model`` into a runnable ``CompiledModel``; ``model`` is not modified."""
        raise NotImplementedError(f"target '{self.name}' does not implement lower()")

    def require_available(self) -> None:
        """Raise ``TargetUnavailableError`` with the reason when the target cannot run here."""
        availability = self.available()
        if not availability.ok:
            raise TargetUnavailableError(
                f"target '{self.name}' is not available here: {availability.reason}",
                hint="run `greencc targets` to see what this machine can run",
            )

    def __repr__(self) -> str:
        options = ", ".join(f"{k}={v}" for k, v in self.options.items())
        return f"<target {self.name} {{{options}}} profile={self._profile_name}>"
