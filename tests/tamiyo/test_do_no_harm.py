"""Growth does no harm: a seed made to hurt is culled by the heuristic, not fossilized."""

from __future__ import annotations

import pytest
import torch

from esper.leyline import Op, SeedStage
from esper.simic.env import EnvConfig, GrowthEnv
from esper.simic.vectorized import Choice, VectorEnv, run_episodes
from esper.tamiyo import HeuristicConfig, build_policy
from tests.simic.toys import TinyCNN, toy_data

# A probe of 32 images measures a seed on the toy task as helping by exactly 0: a little
# tolerance lets a harmless seed through, so the test tells harm from no help.
LENIENT = HeuristicConfig(tolerance=0.05)


class Grower:
    """The heuristic; with `sabotage`, every seed it grows is made to hurt once it blends in:
    its weights are replaced by large random ones the moment it is advanced to BLENDING."""

    def __init__(self, env: GrowthEnv, sabotage: bool):
        self.env, self.sabotage = env, sabotage
        self.policy = build_policy("heuristic", env.vocab, heuristic=LENIENT)

    def __call__(self, observations):
        edits = self.policy.decide(observations)
        for slot_id, slot in self.env.plane.slots.items():
            advanced = any(e.op is Op.ADVANCE and e.slot == slot_id for e in edits)
            if self.sabotage and slot.stage is SeedStage.TRAINING and advanced:
                with torch.no_grad():
                    for p in self.env.plane.seed_parameters(slot_id):
                        p.normal_(0.0, 3.0)
        return Choice(edits)


@pytest.mark.parametrize("sabotage", [False, True])
def test_a_seed_made_to_hurt_is_culled_and_a_harmless_one_fossilized(sabotage):
    cfg = EnvConfig(training_ticks=None, epochs=8, batch_size=32, blend_steps=2, lr=3e-3)
    env = GrowthEnv(TinyCNN, toy_data(), cfg, blueprints=["conv_enhance"], blends=["linear"])
    summary = run_episodes(VectorEnv([env]), [0], Grower(env, sabotage)).summaries[0]
    ops = [e.op for e in env.plane.edits]
    assert ops.count(Op.GERMINATE) == 1
    assert (summary.fossilized, ops.count(Op.CULL)) == ((0, 1) if sabotage else (1, 0))
