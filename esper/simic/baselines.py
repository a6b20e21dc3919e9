"""The host-alone baseline: a policy that never grows anything."""

from __future__ import annotations

from esper.leyline import Edit, Observation, Op


class WaitPolicy:
    """The host-only baseline: never grows anything."""

    def decide(self, observations: list[Observation]) -> list[Edit]:
        return [Edit(Op.WAIT) for _ in observations]
