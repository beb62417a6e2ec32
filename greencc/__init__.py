"""greencc: an energy-aware, compiler-style model optimization toolchain.

    import greencc as gc
    model = gc.load("model.onnx")     # or gc.from_torch(module, inputs), gc.from_pretrained(dir)
    compiled = gc.compile(model, target="ort-cpu", pipeline="-O1")
    outputs = compiled({"x": x}); print(compiled.report.to_console())

Importing greencc loads neither torch nor TVM; names resolve lazily on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_LAZY: dict[str, str] = {
    # frontends and the model
    "load": "greencc.frontend.onnx_file",
    "from_torch": "greencc.frontend.torch_export",
    "from_pretrained": "greencc.frontend.hf",
    "Model": "greencc.model",
    "DecoderSpec": "greencc.model",
    "TensorSpec": "greencc.model",
    # passes
    "Pass": "greencc.pipeline.base",
    "PassResult": "greencc.pipeline.base",
    "register_pass": "greencc.pipeline.base",
    "registered_passes": "greencc.pipeline.base",
    "PassContext": "greencc.pipeline.context",
    "register_analysis": "greencc.pipeline.context",
    "Pipeline": "greencc.pipeline.text",
    "PassManager": "greencc.pipeline.manager",
    "Instrument": "greencc.pipeline.instruments",
    "ProgressEvent": "greencc.pipeline.progress",
    "TerminalProgress": "greencc.pipeline.progress",
    "load_plugin": "greencc.pipeline.plugins",
    # targets
    "Target": "greencc.target",
    "Availability": "greencc.target",
    "Partition": "greencc.target",
    "CompiledModel": "greencc.target",
    "register_target": "greencc.target",
    "registered_targets": "greencc.target",
    # cost model
    "HardwareProfile": "greencc.cost.profile",
    "estimate_cost": "greencc.cost.estimate",
    # verification and report
    "FidelityBudget": "greencc.verify.fidelity",
    "Report": "greencc.report.ledger",
    # energy windows
    "energy_window": "greencc.measure.windows",
    "begin_window": "greencc.measure.windows",
    "end_window": "greencc.measure.windows",
    # driver and its config
    "CompileConfig": "greencc.config",
    "compile": "greencc.driver",
    "optimize": "greencc.driver",
    "inspect": "greencc.driver",
    # search (Ray and Optuna load only when a search runs)
    "search": "greencc.search",
    "SearchResult": "greencc.search",
    "SearchSpace": "greencc.search",
}

_ERRORS = (
    "GreenccError", "UsageError", "ModelLoadError", "UnsupportedOpError", "ExportError",
    "VerificationError", "PassFailedError", "TargetUnavailableError", "InputMismatchError",
    "PassError", "SystemResourceError",
)
for _name in _ERRORS:
    _LAZY[_name] = "greencc.errors"


def __getattr__(name: str) -> Any:
    if name == "ir":
        return importlib.import_module("greencc.ir")
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'greencc' has no attribute '{name}'")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY, "ir"])


if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from greencc import ir  # noqa: F401
    from greencc.config import CompileConfig  # noqa: F401
    from greencc.cost.estimate import estimate_cost  # noqa: F401
    from greencc.cost.profile import HardwareProfile  # noqa: F401
    from greencc.driver import compile, inspect, optimize  # noqa: F401
    from greencc.errors import *  # noqa: F401,F403
    from greencc.frontend.hf import from_pretrained  # noqa: F401
    from greencc.frontend.onnx_file import load  # noqa: F401
    from greencc.frontend.torch_export import from_torch  # noqa: F401
    from greencc.measure.windows import begin_window, end_window, energy_window  # noqa: F401
    from greencc.model import DecoderSpec, Model, TensorSpec  # noqa: F401
    from greencc.pipeline.base import Pass, PassResult, register_pass, registered_passes  # noqa: F401
    from greencc.pipeline.context import PassContext, register_analysis  # noqa: F401
    from greencc.pipeline.instruments import Instrument  # noqa: F401
    from greencc.pipeline.manager import PassManager  # noqa: F401
    from greencc.pipeline.plugins import load_plugin  # noqa: F401
    from greencc.pipeline.progress import ProgressEvent, TerminalProgress  # noqa: F401
    from greencc.pipeline.text import Pipeline  # noqa: F401
    from greencc.report.ledger import Report  # noqa: F401
    from greencc.search import SearchResult, SearchSpace, search  # noqa: F401
    from greencc.target import (  # noqa: F401
        Availability,
        CompiledModel,
        Partition,
        Target,
        register_target,
        registered_targets,
    )
    from greencc.verify.fidelity import FidelityBudget  # noqa: F401
