"""How a search picks its next candidate: Optuna's multi-objective TPE (default), NSGA-II or
random sampling, driven ask/tell by the runner, or the grid every other choice is measured
against. Objectives, both minimized: the search's objective (mJ, ms or bytes) and the
fidelity loss, 1 − cosine.

Why multi-objective TPE by default: a search on one machine evaluates tens of candidates,
not thousands; NSGA-II (population 8 here, Optuna's default is 50) only improves on
random sampling after a few generations, while TPE models good and bad regions from its
first few results. Why ask/tell rather than Ray Tune's OptunaSearch: the cost-model
screen and the digest store sit between asking and compiling, measurement is a separate
task with a per-node resource, and the store (not Tune's experiment state) is what resumes.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from typing import Any

from greencc.errors import UsageError
from greencc.search.space import TEMPLATE, Params, SearchSpace

STRATEGIES = ("tpe", "nsga2", "random", "grid")
# Ask this many NSGA-II children per generation: a 20-minute MiniLM search sees ~30-60.
NSGA2_POPULATION = 8
# Random candidates before TPE starts modelling (after the enqueued presets).
TPE_STARTUP = 6


class GridStrategy:
    """Every point of the space in a fixed order, presets first; learns nothing."""

    def __init__(self, space: SearchSpace) -> None:
        self._points: Iterator[Params] = space.grid()

    def ask(self) -> tuple[Any, Params] | None:
        """The next point, or None when the grid is exhausted."""
        point = next(self._points, None)
        return None if point is None else (None, point)

    def tell(self, token: Any, values: Sequence[float] | None, state: str = "complete") -> None:
        """Nothing to learn."""

    def restore(self, params: Params, values: Sequence[float] | None, state: str = "complete") -> None:
        """Nothing to restore: the runner skips stored points by digest."""


class OptunaStrategy:
    """An Optuna study driven ask/tell (``sampler``: ``tpe``, ``nsga2`` or ``random``); the
    space's presets are asked first, then the sampler's picks."""

    def __init__(self, space: SearchSpace, sampler: str = "tpe", seed: int = 0) -> None:
        import optuna  # lazily: only a search needs it

        # ERROR: TPE logs a warning for every parameter it samples independently of the others
        optuna.logging.set_verbosity(optuna.logging.ERROR)
        self._optuna = optuna
        self.space = space
        samplers = {
            "tpe": lambda: optuna.samplers.TPESampler(seed=seed, n_startup_trials=TPE_STARTUP, multivariate=True,
                                                      group=True),
            "nsga2": lambda: optuna.samplers.NSGAIISampler(seed=seed, population_size=NSGA2_POPULATION),
            "random": lambda: optuna.samplers.RandomSampler(seed=seed),
        }
        if sampler not in samplers:
            raise UsageError(f"unknown search strategy '{sampler}'", hint=f"choose one of: {', '.join(STRATEGIES)}")
        with warnings.catch_warnings():  # multivariate, grouped TPE is "experimental" in Optuna
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            self.study = optuna.create_study(directions=["minimize", "minimize"], sampler=samplers[sampler]())
        self._distributions = {name: optuna.distributions.CategoricalDistribution(list(values))
                               for name, values in space.choices().items()}
        shared = {name: space.choices()[name][0] for name in ("target", "threads")}
        for preset in space.presets:
            self.study.enqueue_trial({"pipeline": preset, **shared}, skip_if_exists=True)

    def ask(self) -> tuple[Any, Params] | None:
        """A new trial and its point."""
        trial = self.study.ask()
        choices = self.space.choices()
        params: Params = {"pipeline": trial.suggest_categorical("pipeline", list(choices["pipeline"]))}
        for name in ("target", "threads"):
            params[name] = trial.suggest_categorical(name, list(choices[name]))
        if params["pipeline"] == TEMPLATE:
            for name, values in choices.items():
                if "." in name:
                    params[name] = trial.suggest_categorical(name, list(values))
        return trial, params

    def tell(self, token: Any, values: Sequence[float] | None, state: str = "complete") -> None:
        """Report a trial's objectives, or that it was screened (``pruned``) or failed."""
        states = self._optuna.trial.TrialState
        if values is None:
            self.study.tell(token, state=states.PRUNED if state == "pruned" else states.FAIL)
        else:
            self.study.tell(token, list(values))

    def restore(self, params: Params, values: Sequence[float] | None, state: str = "complete") -> None:
        """Add a stored candidate to the study as a finished trial (resuming a search)."""
        states = self._optuna.trial.TrialState
        distributions = {name: self._distributions[name] for name in params if name in self._distributions}
        known = {name: value for name, value in params.items() if name in distributions
                 and value in self._distributions[name].choices}
        kind = states.COMPLETE if values is not None else states.PRUNED if state == "pruned" else states.FAIL
        trial = self._optuna.trial.create_trial(
            params=known, distributions={name: distributions[name] for name in known},
            values=list(values) if values is not None else None, state=kind)
        self.study.add_trial(trial)


def make_strategy(name: str, space: SearchSpace, seed: int = 0) -> GridStrategy | OptunaStrategy:
    """The strategy called ``name`` (one of :data:`STRATEGIES`)."""
    if name == "grid":
        return GridStrategy(space)
    return OptunaStrategy(space, name, seed)

