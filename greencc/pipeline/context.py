"""``PassContext``: what every pass in a pipeline run can see (target, profile, data,
budget, seed, instruments, analyses, the executor that runs models and the verification
reference), entered with ``with`` as in TVM.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from greencc.cost.profile import HardwareProfile
from greencc.errors import UsageError
from greencc.execution import Executor, VerificationReference
from greencc.ir.traversal import node_label
from greencc.pipeline.progress import ProgressCallback, ProgressReporter
from greencc.target import Target, resolve_target
from greencc.verify.fidelity import FidelityBudget

if TYPE_CHECKING:
    from greencc.config import CompileConfig
    from greencc.cost.profile import HardwareProfile
    from greencc.model import Model
    from greencc.pipeline.instruments import Instrument
    from greencc.verify.fidelity import FidelityBudget

_CURRENT: contextvars.ContextVar[PassContext | None] = contextvars.ContextVar(
    "greencc_pass_context", default=None
)


@dataclass(frozen=True)
class NearMiss:
    """A site where a pass declined to rewrite, and why (``--explain``)."""

    pass_name: str
    node: str
    reason: str


class PassContext:
    """Options and services shared by the passes of one pipeline run.

    ``dims`` binds symbolic input dims (``{"batch": 1, "seq": 128}``) for cost estimates
    and random verification inputs; ``verify`` turns numerical verification after each
    pass on or off; ``reproducer_dir`` is where a failing run writes its reproducer;
    ``config`` is the :class:`~greencc.config.CompileConfig` the run belongs to (what a
    reproducer records); ``labels`` the calibration samples' integer class ids, one array
    per calibration batch (an ``acc=`` budget's; a reproducer keeps them). ``progress`` (a
    callback receiving :class:`~greencc.pipeline.progress.ProgressEvent` s, or a reporter) becomes
    ``ctx.progress``, the :class:`~greencc.pipeline.progress.ProgressReporter` long passes
    report their inner steps through: ``ctx.progress.step("sensitivity", done, total)``.

    ``executor`` runs every model a pass or instrument needs to run (default: one for
    ``target``, see ``Executor.for_compile``); ``reference`` holds the verification
    samples and reference outputs of the run, filled by the verification instrument.
    """

    def __init__(
        self,
        *,
        target: Target | str | None = None,
        profile: HardwareProfile | str | None = None,
        calibration: Any = None,
        budget: FidelityBudget | str | None = None,
        seed: int = 0,
        dims: Mapping[str, int] | None = None,
        verify: bool = True,
        progress: ProgressCallback | ProgressReporter | None = None,
        cache_dir: str | Path | None = None,
        reproducer_dir: str | Path | None = None,
        instruments: Sequence[Instrument] = (),
        verification_samples: int = 2,
        config: CompileConfig | None = None,
        executor: Executor | None = None,
        labels: Sequence[Any] | None = None,
    ) -> None:
        self.target = resolve_target(target) if target is not None else None
        self.profile = _resolve_profile(profile, self.target)
        self.calibration = calibration
        self.budget = FidelityBudget.parse(budget) if isinstance(budget, str) else budget
        self.seed = seed
        self.dims = dict(dims or {})
        self.verify = verify
        self.progress = progress if isinstance(progress, ProgressReporter) else ProgressReporter(progress)
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.reproducer_dir = Path(reproducer_dir) if reproducer_dir else None
        self.instruments: list[Instrument] = list(instruments)
        self.verification_samples = verification_samples
        self.executor = executor if executor is not None else Executor.for_compile(self.target)
        self.reference = VerificationReference(self.executor)
        self.config = config
        self.labels = list(labels) if labels is not None else None
        self.near_misses: list[NearMiss] = []
        self._analyses: dict[str, Any] = {}
        self._token: contextvars.Token | None = None

    # -- context manager -------------------------------------------------------------
    def __enter__(self) -> PassContext:
        self._token = _CURRENT.set(self)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._token is not None:
            _CURRENT.reset(self._token)
            self._token = None

    @staticmethod
    def current() -> PassContext | None:
        """The innermost entered context, or ``None``."""
        return _CURRENT.get()

    # -- analyses --------------------------------------------------------------------
    def analysis(self, name: str, model: Model) -> Any:
        """Compute (or reuse the cached) analysis ``name`` of ``model``."""
        if name not in self._analyses:
            compute = _ANALYSES.get(name)
            if compute is None:
                raise UsageError(f"unknown analysis '{name}'", hint=f"known: {', '.join(_ANALYSES)}")
            self._analyses[name] = compute(model, self)
        return self._analyses[name]

    def invalidate(self, keep: Sequence[str] = ()) -> None:
        """Drop cached analyses except those in ``keep`` (called when a pass modifies)."""
        self._analyses = {k: v for k, v in self._analyses.items() if k in keep}

    # -- diagnostics -----------------------------------------------------------------
    def record_near_miss(self, pass_name: str, node: Any, reason: str) -> None:
        """Note that ``pass_name`` declined at ``node`` because of ``reason``."""

        label = node if isinstance(node, str) else node_label(node)
        self.near_misses.append(NearMiss(pass_name, label, reason))


_ANALYSES: dict[str, Callable[[Model, PassContext], Any]] = {}


def register_analysis(name: str) -> Callable[[Callable[[Model, PassContext], Any]], Any]:
    """Register ``f(model, ctx) -> result`` as a cached analysis passes can request."""

    def decorate(func: Callable[[Model, PassContext], Any]) -> Callable[[Model, PassContext], Any]:
        _ANALYSES[name] = func
        return func

    return decorate


def _resolve_profile(profile: Any, target: Any) -> Any:
    if isinstance(profile, HardwareProfile):
        return profile
    if isinstance(profile, str):
        return Target.profile_by_name(profile)
    if target is not None:
        return target.profile
    return None
