"""HeuristicPolicy: the hand-written gardener, a baseline for Tamiyo and a teacher for imitation.

Rules, first match wins, one action per environment and step:
  1. a BLENDING seed whose contribution fell `decline` below its best so far, or that
     finished blending with a contribution at or below -`tolerance`, is culled;
  2. a BLENDING seed that finished blending (alpha 1) otherwise is fossilized;
  3. a GERMINATED seed is advanced at once, a TRAINING one after `train_epochs` epochs;
  4. when validation accuracy has plateaued (less than `plateau` gained over 3 epochs),
     fewer than `max_active` seeds are live and the episode is not too far along, the
     earliest slot that may germinate gets the first applicable preferred blueprint;
  5. otherwise WAIT.
It reads only the observation (scaled features, decoded with the leyline scales), so it
runs wherever the network policy runs.
"""

from __future__ import annotations

from typing import Sequence

from esper.leyline import ACTIVE_STAGES, Edit, Observation, Op, SeedStage
from esper.leyline.observations import ACC_SCALE, EPOCH_SCALE
from esper.tamiyo.actions import Action, to_edit


class HeuristicPolicy:
    """Rule-based growth policy with the common `decide` surface; `choose` gives the
    same decisions as index actions (for imitation)."""

    def __init__(
        self,
        blueprints: Sequence[str],
        blends: Sequence[str],
        blend_steps: int,
        blueprint_preference: Sequence[str] = (),
        plateau: float = 0.005,
        train_epochs: int = 3,
        max_active: int = 1,
        latest_germination: float = 0.75,
        decline: float = 0.01,
        tolerance: float = 0.0,
    ):
        self.blueprints, self.blends, self.blend_steps = list(blueprints), list(blends), blend_steps
        unknown = set(blueprint_preference) - set(self.blueprints)
        if unknown:
            raise ValueError(f"preferred blueprints {sorted(unknown)} are not in {self.blueprints}")
        preferred = [self.blueprints.index(name) for name in blueprint_preference]
        self.blueprint_order = preferred + [i for i in range(len(self.blueprints)) if i not in preferred]
        self.plateau = plateau  # accuracy fraction gained over 3 epochs
        self.train_epochs = train_epochs
        self.max_active = max_active
        self.latest_germination = latest_germination  # fraction of the episode
        self.decline = decline  # accuracy fraction below the seed's best contribution
        # A seed just blended in has had little time to help, and a probe of a few hundred
        # images is noisy: tolerance keeps seeds that are not clearly harmful.
        self.tolerance = tolerance
        self._best: dict[tuple[int, str], float] = {}  # (env, slot) -> best contribution while blending

    def decide(self, observations: list[Observation]) -> list[Edit]:
        return [
            to_edit(action, obs, self.blueprints, self.blends, self.blend_steps)
            for action, obs in zip(self.choose(observations), observations)
        ]

    def choose(self, observations: list[Observation]) -> list[Action]:
        return [self._choose(env, obs) for env, obs in enumerate(observations)]

    def _choose(self, env: int, obs: Observation) -> Action:
        stages = obs.stages()
        alpha = obs.slot_feature("alpha").tolist()
        epochs = (obs.slot_feature("epochs_in_stage") * EPOCH_SCALE).round().int().tolist()
        contribution = (obs.slot_feature("contribution") / ACC_SCALE).tolist()
        known = (obs.slot_feature("contribution_known") > 0.5).tolist()
        legal = obs.op_mask

        for n, stage in enumerate(stages):
            key = (env, obs.slot_ids[n])
            if stage is not SeedStage.BLENDING:
                self._best.pop(key, None)  # the seed this memory was about is gone
                continue
            if not known[n]:
                continue
            best = self._best[key] = max(self._best.get(key, contribution[n]), contribution[n])
            done_blending = alpha[n] >= 1.0
            if contribution[n] < best - self.decline or (done_blending and contribution[n] <= -self.tolerance):
                return Action(Op.CULL, n)
            if done_blending and legal[n, Op.FOSSILIZE]:
                return Action(Op.FOSSILIZE, n)

        for n, stage in enumerate(stages):
            ready = stage is SeedStage.GERMINATED or (stage is SeedStage.TRAINING and epochs[n] >= self.train_epochs)
            if ready and legal[n, Op.ADVANCE]:
                return Action(Op.ADVANCE, n)

        live = sum(stage in ACTIVE_STAGES for stage in stages)
        plateaued = (
            obs.global_feature("delta_3_known") > 0.5
            and obs.global_feature("val_acc_delta_3") / ACC_SCALE < self.plateau
        )
        if live < self.max_active and plateaued and obs.global_feature("progress") <= self.latest_germination:
            for n in range(obs.num_slots):
                if legal[n, Op.GERMINATE]:
                    blueprint = next(i for i in self.blueprint_order if obs.blueprint_mask[n, i])
                    blend = int(obs.blend_mask.int().argmax())  # the first available blend
                    return Action(Op.GERMINATE, n, blueprint, blend)
        return Action(Op.WAIT)
