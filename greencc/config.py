"""``CompileConfig``: one frozen, serializable description of a compile (model source,
target and options, pipeline, dims, calibration reference, budget, threads, seed,
measurement settings, plugins), read by ``compile``, the CLI and ``repro`` and recorded in
report.json and the artifact's greencc.json. It holds references and hashes, never data.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import math
import os
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from greencc.errors import UsageError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 reads TOML with the backport
    import tomli as tomllib

SCHEMA = "greencc.config/1"
# Fields of a recipe or a config dict that name files: relative paths are read from the
# recipe's folder (plugins only when they end in .py; other entries are module names).
_PATH_FIELDS = ("model", "calibration")
# More intra-op threads than this many per usable core only slows inference down, and a
# thread pool of thousands hangs ONNX Runtime or exhausts memory (threads=1e9: bad_alloc).
THREADS_PER_CORE = 4
# Seeds feed numpy's legacy and new generators alike, whose common range is 32 bits.
MAX_SEED = 2**32 - 1
# Dims are int32 in the runtimes greencc lowers to (ONNX Runtime's shape arithmetic, TVM).
MAX_DIM = 2**31 - 1


class FrozenMap(Mapping[str, Any]):
    """A read-only, hashable, picklable mapping: what a frozen config holds for options
    and dims. Equal to any mapping with the same items."""

    __slots__ = ("_items",)

    def __init__(self, items: Mapping[str, Any] | None = None) -> None:
        self._items: dict[str, Any] = dict(items or {})

    def __getitem__(self, key: str) -> Any:
        return self._items[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __hash__(self) -> int:
        return hash(tuple(sorted(self._items.items())))

    def __reduce__(self) -> tuple[Any, ...]:
        return (FrozenMap, (self._items,))

    def __repr__(self) -> str:
        return f"FrozenMap({self._items!r})"


@dataclass(frozen=True)
class CompileConfig:
    """What a compile is: everything needed to run it again, as JSON-safe values.

    ``model`` is the model's source (a path, or a description of an in-memory model) and
    ``model_sha256`` the SHA-256 of that file; ``calibration`` / ``calibration_sha256`` name
    the calibration ``.npz`` and its SHA-256 (for in-memory data, a description and the
    SHA-256 of its arrays). ``target`` is a target or tag name and ``target_options`` its
    constructor options; ``pipeline`` is pipeline text or a preset (``-O3``, ``green``);
    ``dims`` binds symbolic input dims; ``budget`` is fidelity-budget text
    (``cos=0.99``); ``threads`` the compiled model's intra-op threads; ``seed`` seeds
    random verification inputs. Measurement: ``measure``, ``energy_window_s`` (s),
    ``grid_intensity`` (gCO2e/kWh or a location code) and ``pue``. ``plugins`` are pass
    or target plugin files (``.py``) or module names, loaded before the pipeline is built.

    Equal configs hash equal; :attr:`digest` is the SHA-256 of the canonical JSON.
    """

    model: str | None = None
    model_sha256: str | None = None
    target: str = "ort-cpu"
    target_options: Mapping[str, Any] = field(default_factory=FrozenMap)
    pipeline: str = "-O1"
    dims: Mapping[str, int] = field(default_factory=FrozenMap)
    calibration: str | None = None
    calibration_sha256: str | None = None
    budget: str | None = None
    threads: int | None = None
    seed: int = 0
    verify: bool = True
    measure: bool = False
    energy_window_s: float = 1.0
    grid_intensity: float | str | None = None
    pue: float | None = None
    plugins: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _check_optional_str(self, "model", "model_sha256", "calibration", "calibration_sha256",
                            "budget")
        for name in ("model_sha256", "calibration_sha256"):
            digest = getattr(self, name)
            if digest is not None and not _is_sha256(digest):
                raise _bad(name, digest, "a SHA-256 as 64 hexadecimal digits")
        if not isinstance(self.target, str) or not self.target.strip():
            raise _bad("target", self.target, "a target or tag name, e.g. 'ort-cpu'")
        if not isinstance(self.pipeline, str):
            raise _bad("pipeline", self.pipeline, 'pipeline text or a preset, e.g. "-O2"')
        if not isinstance(self.target_options, Mapping):
            raise _bad("target_options", self.target_options, "a table of option = value")
        object.__setattr__(self, "target_options", _freeze(self.target_options, "target_options"))
        object.__setattr__(self, "dims", _checked_dims(self.dims))
        if self.threads is not None:
            object.__setattr__(self, "threads", check_threads(self.threads, "compile config field 'threads'"))
        object.__setattr__(self, "seed", check_seed(self.seed, "compile config field 'seed'"))
        for name in ("verify", "measure"):
            if not isinstance(getattr(self, name), bool):
                raise _bad(name, getattr(self, name), "true or false")
        if not (_is_number(self.energy_window_s) and self.energy_window_s > 0):
            raise _bad("energy_window_s", self.energy_window_s, "a positive number of seconds")
        object.__setattr__(self, "energy_window_s", float(self.energy_window_s))
        if self.grid_intensity is not None and not (
            _is_number(self.grid_intensity) or isinstance(self.grid_intensity, str)
        ):
            raise _bad("grid_intensity", self.grid_intensity, "gCO2e/kWh or a location code")
        if _is_number(self.grid_intensity):
            object.__setattr__(self, "grid_intensity", float(self.grid_intensity))
        if self.pue is not None and not _is_number(self.pue):
            raise _bad("pue", self.pue, "a number >= 1")
        if self.pue is not None:
            object.__setattr__(self, "pue", float(self.pue))
        plugins = (self.plugins,) if isinstance(self.plugins, str) else self.plugins
        if not isinstance(plugins, (list, tuple)) or not all(
            isinstance(p, str) and p.strip() for p in plugins
        ):
            raise _bad("plugins", self.plugins, "a list of plugin files or module names")
        object.__setattr__(self, "plugins", tuple(plugins))

    # -- serialization -------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict, ``schema`` first; :meth:`from_dict` reads it back."""
        data: dict[str, Any] = {"schema": SCHEMA}
        for item in dataclasses.fields(self):
            data[item.name] = _thaw(getattr(self, item.name))
        return data

    def to_json(self, path: str | os.PathLike | None = None) -> str:
        """The config as indented JSON; also written to ``path`` when given."""
        text = json.dumps(self.to_dict(), indent=2) + "\n"
        if path is not None:
            Path(path).write_text(text, encoding="utf-8")
        return text

    @property
    def digest(self) -> str:
        """SHA-256 (hex) of the canonical JSON: equal configs, equal digests, on any machine."""
        canonical = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, base_dir: str | os.PathLike | None = None) -> CompileConfig:
        """A config from :meth:`to_dict` output or a recipe's table; ``UsageError`` for an
        unknown field, another schema or a bad value. With ``base_dir``, relative model,
        calibration and ``.py`` plugin paths are read from that folder."""
        if not isinstance(data, Mapping):
            raise UsageError(f"a compile config must be a table of fields, got {type(data).__name__}")
        values = dict(data)
        schema = values.pop("schema", SCHEMA)
        if schema != SCHEMA:
            raise UsageError(f"compile config schema {schema!r} is not {SCHEMA!r}",
                             hint="it was written by another greencc version")
        known = [item.name for item in dataclasses.fields(cls)]
        for key in values:
            if key not in known:
                close = difflib.get_close_matches(str(key), known, n=1)
                hint = f"did you mean '{close[0]}'?" if close else f"the fields are: {', '.join(known)}"
                raise UsageError(f"compile config has no field '{key}'", hint=hint)
        if base_dir is not None:
            values = _rebased(values, Path(base_dir))
        return cls(**values)

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> CompileConfig:
        """Read a config written by :meth:`to_json` (relative paths from its folder)."""
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise UsageError(f"compile config {path} does not exist", hint="check the path") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise UsageError(f"compile config {path} is not readable JSON: {exc}") from None
        return cls.from_dict(data, base_dir=path.parent)

    @classmethod
    def from_toml(cls, path: str | os.PathLike) -> CompileConfig:
        """Read a recipe: a TOML file whose top-level keys are this class's fields, with
        ``[target_options]`` and ``[dims]`` tables; relative paths are read from the
        recipe's folder. ``UsageError`` for a missing file, bad TOML or a bad field."""
        path = Path(path)
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise UsageError(f"recipe {path} does not exist",
                             hint="give the path of a .toml recipe to --config") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"recipe {path} is not readable: {exc}") from None
        except tomllib.TOMLDecodeError as exc:
            raise UsageError(f"recipe {path} is not valid TOML: {exc}",
                             hint="see the recipe format in README.md") from None
        except RecursionError:  # tomllib parses nested arrays and tables recursively
            raise UsageError(f"recipe {path} nests arrays or tables too deeply",
                             hint="see the recipe format in README.md") from None
        try:
            return cls.from_dict(data, base_dir=path.parent)
        except UsageError as exc:
            raise UsageError(f"recipe {path}: {exc.message}", hint=exc.hint) from None


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 (hex) of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def max_threads() -> int:
    """The most intra-op threads greencc accepts: :data:`THREADS_PER_CORE` per usable core."""
    return usable_cores() * THREADS_PER_CORE


def check_threads(value: Any, where: str = "threads") -> int:
    """``value`` as a thread count in [1, :func:`max_threads`]; ``UsageError`` otherwise
    (booleans, fractions, non-finite numbers, out-of-range counts). A string of decimal
    digits counts as its number: target options arrive as text from the CLI."""
    number = _integral(int(value) if isinstance(value, str) and value.strip().isdecimal() else value)
    limit = max_threads()
    if number is None or not 1 <= number <= limit:
        raise UsageError(f"{where}={value!r} is not a thread count between 1 and {limit}",
                         hint=f"this machine has {usable_cores()} usable core(s); at most "
                         f"{THREADS_PER_CORE} threads per core are accepted")
    return number


def check_seed(value: Any, where: str = "seed") -> int:
    """``value`` as a seed in [0, 2**32 - 1]; ``UsageError`` otherwise."""
    number = _integral(value)
    if number is None or not 0 <= number <= MAX_SEED:
        raise UsageError(f"{where} = {value!r} is not a seed", hint=f"a seed is an integer from 0 to {MAX_SEED}")
    return number


def check_dim(name: str, value: Any, where: str = "dims") -> int:
    """``value`` as the size of dim ``name``, in [1, 2**31 - 1]; ``UsageError`` otherwise."""
    number = _integral(value)
    if number is None or not 1 <= number <= MAX_DIM:
        raise UsageError(f"{where}: {name} = {value!r} is not a dim size",
                         hint=f"a dim is a positive integer up to {MAX_DIM}, e.g. seq=128")
    return number


def _integral(value: Any) -> int | None:
    """An int, or an integral finite float, as an int; ``None`` for anything else."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    return None


def is_plugin_file(entry: str) -> bool:
    """True when a plugin entry names a ``.py`` file rather than an importable module."""
    return entry.endswith(".py") or os.sep in entry or "/" in entry


def _rebased(values: dict[str, Any], base: Path) -> dict[str, Any]:
    """``values`` with relative file paths made absolute against ``base``."""
    for name in _PATH_FIELDS:
        value = values.get(name)
        if isinstance(value, str) and value and not os.path.isabs(value):
            values[name] = str(base / value)
    plugins = values.get("plugins")
    if isinstance(plugins, (list, tuple)):
        values["plugins"] = [
            str(base / p) if isinstance(p, str) and is_plugin_file(p) and not os.path.isabs(p) else p
            for p in plugins
        ]
    return values


def _freeze(value: Any, where: str) -> Any:
    """A JSON value made immutable: lists become tuples, tables :class:`FrozenMap`."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise _bad(where, value, "a finite number")
        return value
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(item, where) for item in value)
    if isinstance(value, Mapping):
        if not all(isinstance(key, str) for key in value):
            raise _bad(where, value, "a table whose keys are strings")
        return FrozenMap({key: _freeze(item, f"{where}.{key}") for key, item in value.items()})
    raise _bad(where, value, "a JSON value (number, string, boolean, list or table)")


def _thaw(value: Any) -> Any:
    """The JSON form of a frozen value (tuples as lists, FrozenMap as dict)."""
    if isinstance(value, tuple):
        return [_thaw(item) for item in value]
    if isinstance(value, FrozenMap):
        return {key: _thaw(item) for key, item in value.items()}
    return value


def _checked_dims(dims: Any) -> FrozenMap:
    if not isinstance(dims, Mapping):
        raise _bad("dims", dims, "a table of dim name = positive size")
    for name, size in dims.items():
        if not isinstance(name, str) or not name or not (_is_int(size) and size > 0):
            raise _bad("dims", dict(dims), "a table of dim name = positive size, e.g. {seq = 128}")
    return FrozenMap({name: check_dim(name, size, "compile config field 'dims'") for name, size in dims.items()})


def _check_optional_str(config: CompileConfig, *names: str) -> None:
    for name in names:
        value = getattr(config, name)
        if value is not None and not isinstance(value, str):
            raise _bad(name, value, "a string")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_sha256(value: str) -> bool:
    return len(value) == 64 and all(ch in "0123456789abcdef" for ch in value)


def _bad(name: str, value: Any, expected: str) -> UsageError:
    return UsageError(f"compile config field '{name}' = {value!r} is invalid",
                      hint=f"'{name}' takes {expected}")
