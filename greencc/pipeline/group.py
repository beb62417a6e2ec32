"""``PassGroup``: a named sequence of passes that runs and reports as one pass (``cleanup``,
``fuse``). It reads its members as pipeline text, so it sits beside the pipeline parser."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from greencc.pipeline.base import Pass, PassResult
from greencc.pipeline.text import Pipeline

if TYPE_CHECKING:
    from greencc.model import Model
    from greencc.pipeline.context import PassContext


class PassGroup(Pass):
    """A named sequence of passes that runs and reports as one pass (e.g. ``cleanup``).

    Subclasses set ``members`` to pipeline text; stats are summed per member pass
    (``"dce.removed"``), and the group is lossy when any member is.
    """

    members: ClassVar[str] = ""

    def call(self, model: Model, ctx: PassContext) -> PassResult:
        """Run every member in order (honouring ``steps=N``), merging modified and stats."""
        modified = False
        stats: dict[str, int | float] = {}
        for spec in Pipeline.parse(self.members):
            member = spec.instantiate()
            for _ in range(spec.steps):
                result = member.call(model, ctx)
                model = result.model
                for key, value in result.stats.items():
                    name = f"{member.name}.{key}"
                    stats[name] = stats.get(name, 0) + value
                if not result.modified:
                    break
                modified = True
                ctx.invalidate(member.preserves)
        return PassResult(model, modified, stats)
