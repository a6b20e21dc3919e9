"""Vocabulary: what a policy's head indices name, and how long the blends it starts take."""

from __future__ import annotations

from dataclasses import dataclass

from esper.leyline.edits import Edit, Op
from esper.leyline.observations import Observation


@dataclass(frozen=True)
class Vocabulary:
    """The blueprint head's index i means blueprints[i], the blend head's blends[i]; every
    germination asks for a blend of `blend_steps` ticks."""

    blueprints: tuple[str, ...]
    blends: tuple[str, ...]
    blend_steps: int

    def __post_init__(self):
        object.__setattr__(self, "blueprints", tuple(self.blueprints))
        object.__setattr__(self, "blends", tuple(self.blends))
        if not self.blueprints or not self.blends:
            raise ValueError("a vocabulary needs at least one blueprint and one blend")
        if self.blend_steps < 1:
            raise ValueError(f"blend_steps must be at least 1, got {self.blend_steps}")

    def to_edit(self, action, obs: Observation) -> Edit:
        """Turn index choices (an action with op, slot, blueprint and blend) into the Edit
        the plane applies; slot indexes `obs.slot_ids`."""
        op = Op(int(action.op))
        if op is Op.WAIT:
            return Edit(Op.WAIT)
        slot = obs.slot_ids[int(action.slot)]
        if op is Op.GERMINATE:
            blueprint, blend = self.blueprints[int(action.blueprint)], self.blends[int(action.blend)]
            return Edit(op, slot, blueprint=blueprint, blend=blend, steps=self.blend_steps)
        return Edit(op, slot)

    def to_dict(self) -> dict:
        return {"blueprints": list(self.blueprints), "blends": list(self.blends), "blend_steps": self.blend_steps}
