"""The target registry: ``register_target``, built-ins (``greencc.targets``) and
entry-point plugins (group ``greencc.targets``) loaded lazily, and ``resolve_target`` for
names, tags and instances.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.metadata
import re
import warnings
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from greencc.errors import TargetUnavailableError, UsageError
from greencc.target.base import Availability, Partition, Target

if TYPE_CHECKING:
    from greencc.model import Model
    from greencc.pipeline.context import PassContext
    from greencc.target.artifact import CompiledModel

ENTRY_POINT_GROUP = "greencc.targets"
_NAME_RE = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")

_TARGETS: dict[str, type[Target]] = {}
# tag -> (target name, hardware profile name): named presets, as TVM's target tags.
_TAGS: dict[str, tuple[str, str]] = {}
_BUILTINS_LOADED = False
_PLUGINS_LOADED = False


def register_target(name: str, *, replace: bool = False) -> Callable[[type[Target]], type[Target]]:
    """Class decorator registering a ``Target`` subclass under the kebab-case ``name``.

    Registering a taken name raises ``UsageError`` unless ``replace=True``.
    """
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise UsageError(f"target name {name!r} is not kebab-case", hint="e.g. 'my-npu'")

    def decorate(cls: type[Target]) -> type[Target]:
        if not (isinstance(cls, type) and issubclass(cls, Target)):
            raise TypeError(f"register_target expects a Target subclass, got {cls!r}")
        existing = _TARGETS.get(name)
        if existing is not None and existing is not cls and not replace:
            raise UsageError(
                f"a target named '{name}' is already registered "
                f"({existing.__module__}.{existing.__qualname__})",
                hint="pick another name or pass replace=True",
            )
        cls.name = name
        if not cls.__dict__.get("description"):
            doc = (cls.__doc__ or "").strip()
            cls.description = doc.splitlines()[0] if doc else ""
        _TARGETS[name] = cls
        return cls

    return decorate


def register_tag(tag: str, target: str, profile: str, *, replace: bool = False) -> None:
    """Register ``tag`` as a preset of ``target`` with hardware profile ``profile``.

    The target need not be installed: resolving a tag whose target is missing says so.
    """
    for what, name in (("tag", tag), ("target", target), ("profile", profile)):
        if not isinstance(name, str) or not _NAME_RE.match(name):
            raise UsageError(f"{what} name {name!r} is not kebab-case", hint="e.g. 'my-npu'")
    if tag in _TAGS and _TAGS[tag] != (target, profile) and not replace:
        raise UsageError(f"a tag named '{tag}' is already registered", hint="pick another name or pass replace=True")
    _TAGS[tag] = (target, profile)


def registered_tags() -> dict[str, tuple[str, str]]:
    """Every tag as ``{tag: (target name, profile name)}``: built-ins first, then plugins'."""
    _load_builtins()
    _load_plugins()
    return dict(_TAGS)


def _load_builtins() -> None:
    global _BUILTINS_LOADED
    if not _BUILTINS_LOADED:
        _BUILTINS_LOADED = True
        importlib.import_module("greencc.targets")


def _load_plugins() -> None:
    """Import the targets of the ``greencc.targets`` entry-point group, once.

    A plugin that fails to load is registered as a placeholder that reports itself
    unavailable with the reason, so one broken package never hides the others.
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
            if isinstance(loaded, type) and issubclass(loaded, Target):
                if _TARGETS.get(loaded.name) is not loaded:
                    register_target(entry_point.name)(loaded)
        except Exception as exc:
            reason = f"plugin '{entry_point.value}' failed to load: {type(exc).__name__}: {exc}"
            if entry_point.name in _TARGETS or not _NAME_RE.match(entry_point.name):
                warnings.warn(f"target plugin '{entry_point.name}': {reason}", stacklevel=2)
                continue
            _TARGETS[entry_point.name] = _broken_plugin(entry_point.name, reason)


class _BrokenPlugin(Target):
    """Placeholder for a target plugin that failed to load."""

    broken_reason: ClassVar[str] = ""

    def check_options(self, options: Mapping[str, Any]) -> dict[str, Any]:
        return dict(options)

    def available(self) -> Availability:
        return Availability(False, self.broken_reason)

    def capability(self, model: Model) -> list[Partition]:
        self.require_available()
        return []

    def lower(self, model: Model, ctx: PassContext | None = None) -> CompiledModel:
        self.require_available()
        raise AssertionError("unreachable")


def _broken_plugin(name: str, reason: str) -> type[Target]:
    cls = type(
        f"BrokenPlugin_{name.replace('-', '_')}",
        (_BrokenPlugin,),
        {"broken_reason": reason, "description": f"(plugin failed to load) {reason}"},
    )
    cls.name = name
    return cls


def registered_targets() -> dict[str, type[Target]]:
    """Every target by name, sorted: built-ins, then entry-point plugins (loaded lazily).

    A plugin that failed to load appears as a target whose ``available()`` says why.
    """
    _load_builtins()
    _load_plugins()
    return dict(sorted(_TARGETS.items()))


def get_target_class(name: str) -> type[Target]:
    """The target class registered as ``name``; ``UsageError`` with suggestions otherwise."""
    targets = registered_targets()
    try:
        return targets[name]
    except KeyError:
        raise _unknown_target(name) from None


def _unknown_target(name: str) -> UsageError:
    close = difflib.get_close_matches(name, [*registered_targets(), *registered_tags()], n=3)
    hint = f"did you mean {', '.join(close)}?" if close else "run `greencc targets` to list them"
    return UsageError(f"unknown target '{name}'", hint=hint)


def resolve_target(target: Target | str, **options: Any) -> Target:
    """A ``Target`` instance from an instance, a target name or a tag name.

    A tag (``"x86-avx512"``) selects its target with its hardware profile; ``options``
    go to the target's constructor (``profile=`` overrides a tag's profile). Raises
    ``UsageError`` for an unknown name and ``TargetUnavailableError`` for a tag whose
    target is not installed or a plugin that failed to load.
    """
    if isinstance(target, Target):
        if not options:
            return target
        profile = target._profile if target._profile is not None else target._profile_name
        return type(target)(profile=options.pop("profile", profile), **{**target.options, **options})
    if not isinstance(target, str):
        raise UsageError(
            f"a target must be a name or a greencc.Target, got {type(target).__name__}",
            hint="e.g. target='ort-cpu' or target='x86-avx512'",
        )
    name = target.strip()
    targets = registered_targets()
    if name in targets:
        cls = targets[name]
    else:
        tags = registered_tags()
        if name not in tags:
            raise _unknown_target(name)
        target_name, profile_name = tags[name]
        cls = targets.get(target_name)
        if cls is None:
            raise TargetUnavailableError(
                f"tag '{name}' uses target '{target_name}', which is not registered in this "
                "installation",
                hint=f"install the package that provides '{target_name}', or pick another "
                "target; `greencc targets` lists what is installed",
            )
        options.setdefault("profile", profile_name)
    if issubclass(cls, _BrokenPlugin):
        raise TargetUnavailableError(
            f"target '{cls.name}' is not available: {cls.broken_reason}",
            hint="reinstall or fix the plugin package",
        )
    return cls(**options)
