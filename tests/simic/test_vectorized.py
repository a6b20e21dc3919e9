"""VectorEnv: K environments in lockstep, one batched policy call per decision."""

from __future__ import annotations

import pytest
import torch

from esper.kasmina.hosts import reinitialized_copies
from esper.leyline import Edit, Op, Vocabulary
from esper.simic.env import EnvConfig, GrowthEnv
from esper.simic.vectorized import Choice, VectorEnv, decide_with, run_episodes, sample_with
from esper.tamiyo import HeuristicConfig, HeuristicPolicy, TamiyoPolicy
from tests.simic.toys import TinyCNN


class Counting:
    """Records every call: how many times, and how many observations each time."""

    def __init__(self):
        self.calls = []

    def __call__(self, observations):
        self.calls.append(len(observations))
        step = len(self.calls) - 1
        # Env 0 germinates at the first decision; env 1 only waits.
        edits = [Edit(Op.GERMINATE, "block1", "norm", "linear", 2) if step == 0 else Edit(Op.WAIT), Edit(Op.WAIT)]
        return Choice(edits)


def make_envs(toy, k=2, epochs=3):
    cfg = EnvConfig(training_ticks=None, epochs=epochs, batch_size=32)
    return [GrowthEnv(reinitialized_copies(TinyCNN()), toy, cfg) for _ in range(k)]


def test_two_environments_run_in_lockstep_with_one_call_per_decision(toy):
    envs = make_envs(toy)
    chooser = Counting()
    rollout = run_episodes(VectorEnv(envs), [1, 2], chooser)
    assert chooser.calls == [2, 2, 2]  # one call per decision, with both observations
    assert rollout.throughput["policy_calls"] == 3
    assert len(rollout.decisions) == 3 and all(len(d.results) == 2 for d in rollout.decisions)
    assert [e.plane.ticks for e in envs] == [3, 3]
    assert envs[0].plane.slots["block1"].stage.name == "GERMINATED"
    assert envs[1].plane.slots["block1"].stage.name == "DORMANT"
    assert [len(e.plane.edits) for e in envs] == [3, 3]
    tp = rollout.throughput
    assert tp["images"] == 2 * 3 * len(toy.train) and tp["images_per_second"] > 0 and tp["decisions_per_second"] > 0
    assert len(rollout.summaries) == 2


def test_tamiyo_acts_once_per_decision_on_the_whole_batch(toy, monkeypatch):
    envs = make_envs(toy, epochs=2)
    policy = TamiyoPolicy(Vocabulary(envs[0].vocab.blueprints, envs[0].vocab.blends, 2), hidden=16)
    sizes = []
    act = policy.act

    def counted(batch, deterministic=False):
        sizes.append(batch.size)
        return act(batch, deterministic)

    monkeypatch.setattr(policy, "act", counted)
    rollout = run_episodes(VectorEnv(envs), [0, 1], sample_with(policy))
    assert sizes == [2, 2]
    assert all(d.choice.sample.actions.shape == (2, 4) for d in rollout.decisions)


def test_environments_with_different_episode_lengths_are_refused(toy):
    a, b = make_envs(toy, k=1, epochs=2)[0], make_envs(toy, k=1, epochs=3)[0]
    with pytest.raises(ValueError, match="same number of decisions"):
        VectorEnv([a, b])


def test_heuristic_drives_every_environment_through_a_whole_seed_life(toy):
    # Eight epochs: room to germinate (after three of history), train, blend over two and fossilize.
    # Cull rules off, since a toy probe's contributions are noise (tests/tamiyo covers them).
    envs = make_envs(toy, epochs=8)
    heuristic = HeuristicPolicy(Vocabulary(envs[0].vocab.blueprints, envs[0].vocab.blends, 2), HeuristicConfig(tolerance=1.0, decline=1.0))
    rollout = run_episodes(VectorEnv(envs), [0, 1], decide_with(heuristic))
    assert all(len(d.edits) == 2 for d in rollout.decisions)
    assert torch.isfinite(torch.tensor([s.episode_return for s in rollout.summaries])).all()
    for env, summary in zip(envs, rollout.summaries):
        ops = [e.op for e in env.plane.edits if e.op is not Op.WAIT]
        assert ops == [Op.GERMINATE, Op.ADVANCE, Op.ADVANCE, Op.FOSSILIZE], env.plane.edits
        assert summary.fossilized == 1 and summary.params > summary.host_params
