"""Plugins named at run time: a ``.py`` file or an importable module whose import
registers passes (``@gc.register_pass``) or targets (``@gc.register_target``); what
``--plugin`` and ``CompileConfig.plugins`` load. Installed packages use the entry-point
groups ``greencc.passes`` / ``greencc.targets`` instead.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import sys
from collections.abc import Iterable
from pathlib import Path
from types import ModuleType

from greencc.config import is_plugin_file
from greencc.errors import GreenccError, UsageError
from greencc.pipeline.base import load_builtins

# Plugin files already executed, by resolved path: loading one twice must not register
# its passes twice.
_LOADED_FILES: dict[Path, ModuleType] = {}


def load_plugin(plugin: str | os.PathLike) -> ModuleType:
    """Import a plugin: a ``.py`` file (by path) or a module name; returns the module.

    Built-in passes load first, so a plugin may replace one (``replace=True``). Raises
    ``UsageError`` naming the plugin for a missing file or module and for a plugin whose
    import fails (with the exception it raised).
    """
    load_builtins()
    entry = os.fspath(plugin)
    if is_plugin_file(entry):
        return _load_file(Path(entry))
    try:
        return importlib.import_module(entry)
    except ModuleNotFoundError as exc:
        if exc.name is not None and entry.startswith(exc.name):
            raise UsageError(f"plugin module '{entry}' is not installed",
                             hint="give a .py file path, or install the package that provides it") from None
        raise _broken(entry, exc) from exc
    except GreenccError:
        raise
    except Exception as exc:
        raise _broken(entry, exc) from exc


def load_plugins(plugins: Iterable[str | os.PathLike]) -> None:
    """Load every plugin in order (see :func:`load_plugin`)."""
    for plugin in plugins:
        load_plugin(plugin)


def _load_file(path: Path) -> ModuleType:
    resolved = path.resolve()
    if resolved in _LOADED_FILES:
        return _LOADED_FILES[resolved]
    if not resolved.is_file():
        raise UsageError(f"plugin file {path} does not exist",
                         hint="give the path of a .py file that registers passes or targets")
    tag = hashlib.sha256(str(resolved).encode()).hexdigest()[:8]
    name = f"greencc_plugin_{resolved.stem.replace('-', '_')}_{tag}"
    spec = importlib.util.spec_from_file_location(name, resolved)
    if spec is None or spec.loader is None:
        raise UsageError(f"plugin file {path} cannot be imported", hint="a plugin is a .py file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except GreenccError as exc:
        del sys.modules[name]
        raise UsageError(f"plugin {path} failed to load: {exc.message}", hint=exc.hint) from None
    except Exception as exc:
        del sys.modules[name]
        raise _broken(str(path), exc) from exc
    _LOADED_FILES[resolved] = module
    return module


def _broken(plugin: str, exc: BaseException) -> UsageError:
    return UsageError(
        f"plugin {plugin} failed to load: {type(exc).__name__}: {exc}",
        hint="fix the plugin; GREENCC_DEBUG=1 shows the traceback",
    )
