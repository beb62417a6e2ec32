"""The pass contract: ``Pass``, ``PassResult``, typed options and the explicit registry.

A pass has a kebab-case name given at registration (never derived from the class name),
typed options declared as annotated class attributes with defaults, a docstring stating
its rewrite as ``Before -> After``, and a ``lossy`` flag that decides how it is verified.
Built-ins (``greencc.passes``) and the passes of the ``greencc.passes`` entry-point group
load lazily, on the first look-up.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import re
import typing
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal, get_args, get_origin

from greencc.errors import PassError, UsageError

if TYPE_CHECKING:
    from greencc.model import Model
    from greencc.pipeline.context import PassContext

_NAME_RE = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")
# Option names every pass accepts, handled by the PassManager rather than the pass.
MANAGER_OPTIONS = ("steps",)


@dataclass
class PassResult:
    """What a pass returns: the (possibly same) model, whether it changed, and counters.

    ``stats`` holds small integer facts for the ledger, e.g. ``{"removed": 12}`` or
    ``{"fused": 6, "activation_bytes_removed": 4096}``.
    """

    model: Model
    modified: bool
    stats: dict[str, int | float] = field(default_factory=dict)


@dataclass(frozen=True)
class OptionSpec:
    """One typed pass option: its name, Python type, default and allowed choices."""

    name: str
    type: Any
    default: Any
    choices: tuple[Any, ...] | None = None

    def coerce(self, raw: Any, pass_name: str) -> Any:
        """Convert a pipeline-text string (or a Python value) to this option's type."""
        try:
            if self.choices is not None:
                value = raw
                if isinstance(raw, str):
                    matches = [c for c in self.choices if str(c) == raw]
                    value = matches[0] if matches else raw
                if value not in self.choices:
                    raise ValueError(f"must be one of {', '.join(map(str, self.choices))}")
                return value
            if self.type is bool:
                if isinstance(raw, bool):
                    return raw
                lowered = str(raw).lower()
                if lowered in ("true", "1", "yes", "on"):
                    return True
                if lowered in ("false", "0", "no", "off"):
                    return False
                raise ValueError("must be true or false")
            if self.type is int:
                if isinstance(raw, bool) or (isinstance(raw, float) and not raw.is_integer()):
                    raise ValueError("must be an integer")
                return int(raw)
            if self.type is float:
                return float(raw)
            if self.type is str:
                return str(raw)
            return raw
        except (TypeError, ValueError) as exc:
            raise UsageError(
                f"pass '{pass_name}': option {self.name}={raw!r} is invalid: {exc}",
                hint=f"{self.name} takes {self.describe_type()} (default {self.default!r})",
            ) from None

    def describe_type(self) -> str:
        """A short human name of the option's type."""
        if self.choices is not None:
            return "|".join(map(str, self.choices))
        return getattr(self.type, "__name__", str(self.type))


class Pass:
    """Base class of every graph pass.

    Subclasses set ``lossy``, may override ``requires`` / ``ensures`` to check pre- and
    post-conditions, and implement ``call(model, ctx) -> PassResult``. Passes rewrite
    ``model`` in place and must report ``modified`` honestly: the manager invalidates
    cached analyses and verifies numerics only when it is true.
    """

    name: ClassVar[str] = ""
    lossy: ClassVar[bool] = False
    # Analyses (by name) the pass reads through ctx.analysis(); listed in `greencc passes`.
    analyses: ClassVar[tuple[str, ...]] = ()
    # Analyses that stay valid even when this pass modifies the model.
    preserves: ClassVar[tuple[str, ...]] = ()
    option_specs: ClassVar[dict[str, OptionSpec]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.option_specs = _collect_options(cls)

    def __init__(self, **options: Any) -> None:
        label = self.name or type(self).__name__
        for key in options:
            if key not in self.option_specs:
                known = ", ".join(self.option_specs) or "none"
                raise UsageError(
                    f"pass '{label}' has no option '{key}'", hint=f"its options are: {known}"
                )
        self.options: dict[str, Any] = {}
        for key, spec in self.option_specs.items():
            value = spec.coerce(options[key], label) if key in options else spec.default
            self.options[key] = value
            setattr(self, key, value)
        self._explicit = {k: self.options[k] for k in options}

    def call(self, model: Model, ctx: PassContext) -> PassResult:
        """Rewrite ``model`` in place and say whether it changed."""
        raise NotImplementedError

    def requires(self, model: Model, ctx: PassContext) -> None:
        """Raise ``PassError`` when ``model`` does not meet the pass's precondition."""

    def ensures(self, model: Model, ctx: PassContext) -> None:
        """Raise ``PassError`` when the rewritten ``model`` breaks the postcondition."""

    def decline(self, ctx: PassContext, node: Any, reason: str) -> None:
        """Record why this pass did not rewrite at ``node``; shown by ``--explain NAME``."""
        ctx.record_near_miss(self.name, node, reason)

    def __str__(self) -> str:
        if not self._explicit:
            return self.name
        body = ",".join(f"{k}={_format_value(v)}" for k, v in self._explicit.items())
        return f"{self.name}{{{body}}}"

    def __repr__(self) -> str:
        return f"<pass {self}>"


def _format_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _collect_options(cls: type) -> dict[str, OptionSpec]:
    try:
        hints = typing.get_type_hints(cls)
    except Exception:
        hints = {}
    specs: dict[str, OptionSpec] = {}
    for klass in reversed(cls.__mro__):
        if klass is object or klass is Pass:
            continue
        for attr in klass.__dict__.get("__annotations__", {}):
            hint = hints.get(attr)
            if attr.startswith("_") or hint is None or get_origin(hint) is ClassVar:
                continue
            if attr in MANAGER_OPTIONS:
                raise TypeError(f"{cls.__name__}: option name '{attr}' is reserved")
            if not hasattr(cls, attr):
                raise TypeError(f"{cls.__name__}: option '{attr}' needs a default value")
            choices = tuple(get_args(hint)) if get_origin(hint) is Literal else None
            specs[attr] = OptionSpec(attr, hint, getattr(cls, attr), choices)
    return specs


ENTRY_POINT_GROUP = "greencc.passes"

_PASSES: dict[str, type[Pass]] = {}
_BUILTINS_LOADED = False
_PLUGINS_LOADED = False


def register_pass(
    name: str, *, lossy: bool = False, replace: bool = False
) -> Callable[[Any], Any]:
    """Register a pass class, or a plain ``f(model, ctx) -> PassResult | bool``, as ``name``.

    ``name`` is kebab-case and is the only name pipelines know the pass by. Registering a
    taken name raises unless ``replace=True``.
    """
    if not _NAME_RE.match(name):
        raise UsageError(f"pass name '{name}' is not kebab-case", hint="e.g. 'fold-mul-one'")

    def decorate(obj: Any) -> Any:
        if name in _PASSES and not replace and _PASSES[name] is not obj:
            raise UsageError(
                f"a pass named '{name}' is already registered ({_PASSES[name].__qualname__})",
                hint="pick another name or pass replace=True",
            )
        if isinstance(obj, type) and issubclass(obj, Pass):
            obj.name = name
            _PASSES[name] = obj
            return obj
        if callable(obj):
            cls = _function_pass(obj, name, lossy)
            _PASSES[name] = cls
            return obj
        raise TypeError(f"register_pass expects a Pass subclass or a function, got {obj!r}")

    return decorate


def _function_pass(func: Callable[..., Any], name: str, lossy: bool) -> type[Pass]:
    def call(self: Pass, model: Model, ctx: PassContext) -> PassResult:
        result = func(model, ctx)
        if isinstance(result, PassResult):
            return result
        if isinstance(result, bool):
            return PassResult(model, modified=result)
        raise PassError(
            f"function pass '{name}' returned {type(result).__name__}",
            hint="return a PassResult or a bool saying whether the model changed",
        )

    cls = type(
        f"FunctionPass_{func.__name__}",
        (Pass,),
        {"call": call, "lossy": lossy, "__doc__": func.__doc__, "__module__": func.__module__},
    )
    cls.name = name
    return cls


def load_builtins() -> None:
    """Import the built-in passes (``greencc.passes``) once, so that they register."""
    global _BUILTINS_LOADED
    if not _BUILTINS_LOADED:
        _BUILTINS_LOADED = True
        importlib.import_module("greencc.passes")


def _load_plugins() -> None:
    """Load the passes of the ``greencc.passes`` entry-point group, once.

    An entry point names a ``Pass`` subclass, a pass function or a module whose import
    registers its passes. One that fails to load is registered under its name as a pass
    that refuses to run and says why (and a warning is issued), so one broken package
    never hides the others.
    """
    global _PLUGINS_LOADED
    if _PLUGINS_LOADED:
        return
    _PLUGINS_LOADED = True
    try:
        entry_points = list(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP))
    except Exception as exc:  # a broken installation's metadata must not break greencc
        warnings.warn(f"could not read the '{ENTRY_POINT_GROUP}' entry points: {exc}", stacklevel=2)
        return
    for entry_point in entry_points:
        try:
            loaded = entry_point.load()
            if isinstance(loaded, type) and issubclass(loaded, Pass):
                if _PASSES.get(loaded.name) is not loaded:
                    register_pass(entry_point.name)(loaded)
            elif callable(loaded) and entry_point.name not in _PASSES:
                register_pass(entry_point.name)(loaded)
        except Exception as exc:
            reason = f"plugin '{entry_point.value}' failed to load: {type(exc).__name__}: {exc}"
            warnings.warn(f"pass plugin '{entry_point.name}': {reason}", stacklevel=2)
            if entry_point.name not in _PASSES and _NAME_RE.match(entry_point.name):
                _PASSES[entry_point.name] = _broken_plugin(entry_point.name, reason)


class _BrokenPlugin(Pass):
    """Placeholder for a pass plugin that failed to load: it refuses to run, saying why."""

    broken_reason: ClassVar[str] = ""

    def __init__(self, **options: Any) -> None:
        raise UsageError(
            f"pass '{self.name}' is not available: {self.broken_reason}",
            hint="reinstall or fix the plugin package",
        )


def _broken_plugin(name: str, reason: str) -> type[Pass]:
    cls = type(
        f"BrokenPlugin_{name.replace('-', '_')}",
        (_BrokenPlugin,),
        {"broken_reason": reason, "__doc__": f"(plugin failed to load) {reason}"},
    )
    cls.name = name
    return cls


def get_pass_class(name: str) -> type[Pass]:
    """The pass class registered as ``name``; ``UsageError`` with suggestions otherwise."""
    load_builtins()
    _load_plugins()
    try:
        return _PASSES[name]
    except KeyError:
        import difflib

        close = difflib.get_close_matches(name, list(_PASSES), n=3)
        hint = f"did you mean {', '.join(close)}?" if close else "run `greencc passes` to list them"
        raise UsageError(f"unknown pass '{name}'", hint=hint) from None


def registered_passes() -> dict[str, type[Pass]]:
    """All registered passes by name, sorted: built-ins, entry-point plugins (a broken
    one appears as a pass whose summary says why it failed to load) and the user's."""
    load_builtins()
    _load_plugins()
    return dict(sorted(_PASSES.items()))


def pass_summary(cls: type[Pass]) -> str:
    """The first line of a pass's docstring."""
    doc = (cls.__doc__ or "").strip()
    return doc.splitlines()[0] if doc else ""
