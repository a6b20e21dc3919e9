"""Baseline policies as simic configures them: the heuristic for short episodes, host-only WAIT.

HeuristicConfig holds the settings of tamiyo's HeuristicPolicy that suit an episode of a
few ticks (it is saved in a run's config.yaml); `build` makes the policy, wrapped in
DeepestFirst by default. WaitPolicy never grows anything: the host-alone baseline.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from esper.leyline import Edit, Observation, Op
from esper.tamiyo import HeuristicPolicy


@dataclass
class HeuristicConfig:
    """HeuristicPolicy settings for short episodes (ticks, not epochs). With the defaults
    a seed germinates as soon as three ticks of history exist and fossilizes about
    2 + train_epochs + blend_steps ticks later, which fits an 8-tick episode."""

    blueprint_preference: list[str] = field(default_factory=lambda: ["depthwise", "lora", "attention", "conv_enhance", "mlp"])
    plateau: float = 1.0  # accuracy gained over 3 ticks below which the host counts as stalled (1.0: always)
    train_epochs: int = 1
    max_active: int = 1
    latest_germination: float = 0.5
    decline: float = 0.05  # validation probes of a few hundred images move by a few points
    tolerance: float = 0.0  # a blended seed contributing more than -tolerance is fossilized
    # Where to germinate: "first" is the heuristic's own rule (the earliest free slot);
    # "last" offers it only the deepest free slot, where a seed of a host trained from
    # scratch changes the most in a short episode.
    germinate_at: str = "last"

    def __post_init__(self):
        if self.germinate_at not in ("first", "last"):
            raise ValueError(f"germinate_at must be 'first' or 'last', got {self.germinate_at!r}")

    def build(self, blueprints: list[str], blends: list[str], blend_steps: int):
        preference = [b for b in self.blueprint_preference if b in blueprints]
        policy = HeuristicPolicy(
            blueprints,
            blends,
            blend_steps,
            blueprint_preference=preference,
            plateau=self.plateau,
            train_epochs=self.train_epochs,
            max_active=self.max_active,
            latest_germination=self.latest_germination,
            decline=self.decline,
            tolerance=self.tolerance,
        )
        return DeepestFirst(policy) if self.germinate_at == "last" else policy


class DeepestFirst:
    """A rule-based policy that sees GERMINATE offered only in the deepest slot where it
    is legal. Same surface as the policy it wraps (`decide`, `choose`, vocabulary)."""

    def __init__(self, policy: HeuristicPolicy):
        self.policy = policy
        self.blueprints, self.blends, self.blend_steps = policy.blueprints, policy.blends, policy.blend_steps

    @staticmethod
    def _deepest(obs: Observation) -> Observation:
        mask = obs.op_mask.clone()
        legal = mask[:, Op.GERMINATE].nonzero().flatten()
        if len(legal) > 1:
            mask[legal[:-1], Op.GERMINATE] = False
        return dataclasses.replace(obs, op_mask=mask)

    def choose(self, observations: list[Observation]):
        return self.policy.choose([self._deepest(o) for o in observations])

    def decide(self, observations: list[Observation]) -> list[Edit]:
        return self.policy.decide([self._deepest(o) for o in observations])


class WaitPolicy:
    """The host-only baseline: never grows anything."""

    def decide(self, observations: list[Observation]) -> list[Edit]:
        return [Edit(Op.WAIT) for _ in observations]
