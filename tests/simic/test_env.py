"""GrowthEnv: one episode grows one host, every decision through plane.apply, rewards with components."""

from __future__ import annotations

import pytest
import torch

import esper
from esper.kasmina.hosts import reinitialized_copies
from esper.leyline import Edit, Op, SeedStage, Vocabulary
from esper.simic.env import EnvConfig, GrowthEnv
from esper.simic.rewards import RewardBreakdown
from esper.simic.vectorized import VectorEnv, decide_with, run_episodes
from esper.tamiyo import HeuristicConfig, HeuristicPolicy, WaitPolicy
from tests.simic.toys import SCRIPT, TinyCNN, toy_data

S = SeedStage


class Script:
    """A policy that plays a fixed list of edits, one per decision (WAIT when it runs out)."""

    def __init__(self, edits):
        self.edits = list(edits)
        self.calls = 0

    def decide(self, observations):
        edit = self.edits[self.calls] if self.calls < len(self.edits) else Edit(Op.WAIT)
        self.calls += 1
        return [edit for _ in observations]


def make_env(data=None, **cfg) -> GrowthEnv:
    cfg = EnvConfig(**{"training_ticks": None, "epochs": 6, "batch_size": 32, "blend_steps": 1, **cfg})
    return GrowthEnv(reinitialized_copies(TinyCNN()), data or toy_data(), cfg)


def play(env, policy, seed=0):
    return run_episodes(VectorEnv([env]), [seed], decide_with(policy))


def test_episode_leaves_a_replayable_edit_log():
    env = make_env()
    rollout = play(env, Script(SCRIPT))
    plane = env.plane
    assert [d.results[0].info.edit.op.name for d in rollout.decisions] == [
        "GERMINATE",
        "ADVANCE",
        "GERMINATE",
        "ADVANCE",
        "FOSSILIZE",
        "CULL",
    ]
    assert plane.ticks == 6 and rollout.decisions[-1].results[0].done
    stages = {i: s.stage for i, s in plane.slots.items()}
    assert stages["block2"] is S.FOSSILIZED and "block2+1" in stages
    assert stages["block1"] in (S.CULLED, S.DORMANT)

    # The same edits, applied through plane.apply at the ticks they were logged at, on a fresh host.
    fresh = esper.instrument(TinyCNN(), (torch.randn(2, 3, 16, 16),))
    for edit in plane.edits:
        while fresh.plane.ticks < edit.tick:
            fresh.plane.step()
        fresh.plane.apply(Edit(edit.op, edit.slot, edit.blueprint, edit.blend, edit.steps))
    while fresh.plane.ticks < plane.ticks:
        fresh.plane.step()
    assert {i: s.stage for i, s in fresh.plane.slots.items()} == stages
    assert [s.alpha for s in fresh.plane.slots.values()] == [s.alpha for s in plane.slots.values()]
    assert fresh.plane.slots["block2"].blueprint == "conv_enhance"
    # esper.replay reads the same log.
    replayed = esper.replay(TinyCNN(), (torch.randn(2, 3, 16, 16),), plane.edits, until_step=plane.ticks)
    assert {i: s.stage for i, s in replayed.plane.slots.items()} == stages


def test_rewards_come_with_their_components():
    env = make_env()
    rollout = play(env, Script(SCRIPT))
    infos = [d.results[0].info for d in rollout.decisions]
    components = set(RewardBreakdown.__dataclass_fields__) | {"total"}
    for info in infos:
        assert set(info.reward) == components
        parts = sum(v for k, v in info.reward.items() if k != "total")
        assert info.reward["total"] == pytest.approx(parts)
        assert 0.0 <= info.val_acc <= 1.0 and 0.0 <= info.train_acc <= 1.0
    assert infos[0].reward["germination"] < 0  # paid at GERMINATE ...
    assert infos[4].reward["refund"] > 0  # ... refunded at FOSSILIZE
    assert infos[-1].reward["terminal_acc"] == pytest.approx(10 * infos[-1].val_acc)
    assert infos[-1].reward["param_cost"] < 0  # the fossil's parameters, charged once at the end
    assert all(i.reward["terminal_acc"] == 0 for i in infos[:-1])
    summary = rollout.summaries[0]
    assert summary.episode_return == pytest.approx(sum(i.reward["total"] for i in infos))
    assert summary.fossilized == 1 and summary.germinated == 2 and summary.culled == 1
    assert summary.params > summary.host_params
    assert len(summary.timeline) == 7 and summary.timeline[0]["block2"][0] == "DORMANT"


def test_blending_seeds_get_a_measured_contribution():
    env = make_env()
    rollout = play(env, Script(SCRIPT))
    infos = [d.results[0].info for d in rollout.decisions]
    # block2 blends during step 4 and fossilizes at step 5: measured while blending, kept as a fossil.
    assert infos[3].slots["block2"][0] == "BLENDING"
    assert "block2" in infos[3].contributions
    assert infos[4].contributions["block2"] == infos[3].contributions["block2"]
    assert "block1" not in infos[2].contributions  # GERMINATED seeds are not in the output
    # The observation carries it as a feature.
    obs = rollout.decisions[4].observations[0]
    col = obs.slot_feature("contribution_known")
    assert float(col[obs.slot_ids.index("block2")]) == 1.0


def test_an_episode_is_reproducible_whatever_the_global_rng_does():
    env = make_env(epochs=3)
    first = play(env, WaitPolicy(), seed=7)
    torch.manual_seed(12345)
    torch.rand(100)
    second = play(env, WaitPolicy(), seed=7)
    third = play(env, WaitPolicy(), seed=8)
    acc = lambda r: [d.results[0].info.val_loss for d in r.decisions]  # noqa: E731
    assert acc(first) == acc(second)
    assert acc(first) != acc(third)


def test_several_decisions_per_epoch_split_the_epoch():
    env = make_env(epochs=2, decisions_per_epoch=3, batch_size=16)  # 96 images: 6 batches, 2 per decision
    rollout = play(env, WaitPolicy())
    infos = [d.results[0].info for d in rollout.decisions]
    assert len(infos) == 6 and env.plane.ticks == 6
    assert [i.images for i in infos] == [32] * 6
    assert [i.epoch for i in infos] == pytest.approx([1 / 3, 2 / 3, 1, 4 / 3, 5 / 3, 2])


def test_seeds_join_and_leave_the_host_optimizer():
    env = make_env()
    env.reset(0)
    groups = len(env.trainer.optimizer.param_groups)
    env.step(SCRIPT[0])
    assert len(env.trainer.optimizer.param_groups) == groups + 1
    env.step(SCRIPT[1])
    env.step(Edit(Op.CULL, "block2"))
    assert len(env.trainer.optimizer.param_groups) == groups
    # Two seeds of one blueprint (groups of equal length): culling the second leaves the first.
    env.step(Edit(Op.GERMINATE, "block1", "norm", "linear", 1))
    env.step(Edit(Op.GERMINATE, "block2", "norm", "linear", 1))
    env.step(Edit(Op.CULL, "block2"))
    assert [g.get("esper_slot") for g in env.trainer.optimizer.param_groups][groups:] == ["block1"]


def test_a_host_that_does_not_fit_the_data_is_refused():
    env = GrowthEnv(reinitialized_copies(TinyCNN(num_classes=7)), toy_data(), EnvConfig(training_ticks=None, epochs=1))
    with pytest.raises(ValueError, match="4 classes"):
        env.reset(0)


def test_stepping_a_finished_episode_raises():
    env = make_env(epochs=1)
    play(env, WaitPolicy())
    with pytest.raises(RuntimeError, match="reset"):
        env.step(Edit(Op.WAIT))


def test_heuristic_fossilizes_a_seed_on_the_synthetic_task(synthetic_small):
    """The default heuristic schedule in an 8-epoch episode: germinate at epoch 3 in the deepest
    slot, train, blend over 2 epochs, fossilize. Its cull rules read contributions measured on 60
    validation images, a few images either way, so they are turned off here and the test holds
    whatever the seed (tests/tamiyo/test_baselines.py tests the cull rules on chosen contributions)."""
    from tests.helpers import HostCNN

    cfg = EnvConfig(training_ticks=None, epochs=8, batch_size=64)
    env = GrowthEnv(reinitialized_copies(HostCNN()), synthetic_small, cfg)
    heuristic = HeuristicPolicy(
        Vocabulary(env.vocab.blueprints, env.vocab.blends, cfg.blend_steps), HeuristicConfig(tolerance=1.0, decline=1.0)
    )
    rollout = play(env, heuristic, seed=0)
    summary = rollout.summaries[0]
    assert summary.germinated == 1
    assert summary.fossilized == 1, [d.results[0].info.edit for d in rollout.decisions]
    assert summary.params > summary.host_params
    assert summary.fossil_blueprints == ["depthwise"]  # the first preference that fits a conv slot
    assert env.plane.slots["block3"].stage is S.FOSSILIZED  # the deepest slot


def test_static_fossils_are_grown_before_the_first_step_and_logged():
    env = make_env(epochs=1, fossils={"block2": "conv_enhance"})
    env.reset(0)
    slot = env.plane.slots["block2"]
    assert slot.stage is S.FOSSILIZED and slot.blueprint == "conv_enhance"
    assert [e.op for e in env.plane.edits] == [Op.GERMINATE, Op.ADVANCE, Op.ADVANCE, Op.FOSSILIZE]
    fossil = {id(p) for p in env.plane.seed_parameters("block2")}
    trained = {id(p) for group in env.trainer.optimizer.param_groups for p in group["params"]}
    assert fossil and fossil <= trained  # the fossil trains with the host from the first step
    before = [p.detach().clone() for p in env.plane.seed_parameters("block2")]
    env.step(Edit(Op.WAIT))
    assert any(not torch.equal(b, p) for b, p in zip(before, env.plane.seed_parameters("block2")))


def test_static_fossils_grow_a_chain_one_generation_at_a_time():
    """The fossils a grown run ends with, such as `block2` and the slot opened after it,
    rebuild as a static model: the same-module ceiling growth is judged against."""
    env = make_env(epochs=1, fossils={"block2": "depthwise", "block2+1": "norm"})
    env.reset(0)
    assert [env.plane.slots[s].stage for s in ("block2", "block2+1")] == [S.FOSSILIZED, S.FOSSILIZED]
    assert env.plane.slots["block2+1"].blueprint == "norm" and "block2+2" in env.plane.slots
    assert env.plane.ticks == 2  # one tick per generation


def test_static_fossils_must_name_slots_of_the_host():
    with pytest.raises(ValueError, match="unknown slots.*block9"):
        make_env(fossils={"block9": "conv_enhance"}).reset(0)


def test_channels_last_trains_the_same_model_in_the_other_layout():
    edits = [Edit(Op.GERMINATE, "block2", blueprint="conv_enhance", blend="linear", steps=1), Edit(Op.ADVANCE, "block2")]
    runs = {}
    for layout in (False, True):
        env = make_env(epochs=2, channels_last=layout)
        play(env, Script(edits))
        runs[layout] = env
    weights = [p for p in runs[True].mm.parameters() if p.dim() == 4]
    assert weights and all(p.is_contiguous(memory_format=torch.channels_last) for p in weights)
    seed = runs[True].plane.seed_parameters("block2")
    assert any(p.dim() == 4 and p.is_contiguous(memory_format=torch.channels_last) for p in seed)
    for key in ("train_loss", "val_loss"):
        assert getattr(runs[True].loop.record.now, key) == pytest.approx(getattr(runs[False].loop.record.now, key), rel=1e-3)


def test_rewards_relative_to_the_twin_pay_only_for_what_growth_added():
    """With relative_to_twin the host alone on the same seed earns exactly nothing, and a
    grown episode's accuracy terms are its own minus the twin's; the twin runs once per
    seed, in a cache environments may share."""
    from esper.simic.rewards import RewardConfig

    cfg = EnvConfig(training_ticks=1, epochs=4, batch_size=32, blend_steps=1, decisions_per_epoch=1)
    data = toy_data()
    twins: dict = {}

    def env(relative: bool) -> GrowthEnv:
        reward = RewardConfig(relative_to_twin=relative)
        return GrowthEnv(reinitialized_copies(TinyCNN()), data, cfg, reward, twin_cache=twins if relative else None)

    alone = play(env(True), WaitPolicy(), seed=3)
    assert sum(d.rewards[0] for d in alone.decisions) == 0.0
    assert list(twins) == [3] and len(twins[3]) == cfg.decisions + 1

    grow = Script([Edit(Op.GERMINATE, "block2", blueprint="conv_enhance", blend="linear", steps=1)])
    relative, absolute = play(env(True), grow, seed=3), play(env(False), Script(grow.edits), seed=3)
    for rel, ab in zip(relative.decisions, absolute.decisions):
        assert rel.results[0].info.val_acc == ab.results[0].info.val_acc  # the same episode, paid differently
    r, a = relative.summaries[0].reward, absolute.summaries[0].reward
    assert r["task"] + r["terminal_acc"] == pytest.approx(
        a["task"] + a["terminal_acc"] - 10 * twins[3][-1] - 10 * (twins[3][-1] - twins[3][0])
    )
    assert list(twins) == [3]  # the cached twin was reused
