"""Energy-objective search over pipelines, on Ray: ``search`` tries compiles of a model
(presets, pass options, threads, targets), screens them with the cost model, compiles and
verifies in parallel, measures one candidate per node at a time, stores every finished
candidate by its CompileConfig digest, and returns the Pareto front of energy, latency and
fidelity as a :class:`SearchResult`. Ray and Optuna load only when a search runs.
"""

import sys
import types
from typing import Any

from greencc.search.result import SearchResult
from greencc.search.runner import load_result, search
from greencc.search.space import SearchSpace, default_space

__all__ = ["SearchResult", "SearchSpace", "default_space", "load_result", "search"]


class _CallableModule(types.ModuleType):
    """``gc.search(...)`` whether or not this package was imported first: importing
    ``greencc.search`` binds the package, not the function, to that name in ``greencc``."""

    def __call__(self, *args: Any, **kwargs: Any) -> SearchResult:
        return search(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
