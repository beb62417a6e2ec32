"""Targets: the backends greencc lowers to. ``base`` holds what a target implements,
``registry`` how targets are named, found and plugged in, ``artifact`` the
``CompiledModel`` a target produces. Built-in targets live in ``greencc.targets``.
"""

from greencc.target.artifact import MANIFEST_NAME, REPORT_NAME, CompiledModel, read_manifest
from greencc.target.base import (
    FALLBACK_PREFIX,
    FALLBACK_TARGET,
    UNSUPPORTED,
    Availability,
    Partition,
    Target,
    group_partitions,
    node_id,
)
from greencc.target.registry import (
    ENTRY_POINT_GROUP,
    get_target_class,
    register_tag,
    register_target,
    registered_tags,
    registered_targets,
    resolve_target,
)

__all__ = [
    "Availability", "CompiledModel", "ENTRY_POINT_GROUP", "FALLBACK_PREFIX", "FALLBACK_TARGET",
    "MANIFEST_NAME", "REPORT_NAME", "Partition", "Target", "UNSUPPORTED", "get_target_class",
    "group_partitions", "node_id", "read_manifest", "register_tag", "register_target", "registered_tags",
    "registered_targets",
    "resolve_target",
]
