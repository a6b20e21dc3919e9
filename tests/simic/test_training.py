"""The PPO loop: config files, metrics, checkpoints, resume without loss, warm start."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from esper.runs import config as config_io
from esper.runs.metrics import read_jsonl
from esper.simic.training import Trainer, load_config, load_policy
from esper.tamiyo import PPOConfig
from tests.helpers import named
from tests.simic.toys import TinyCNN, tiny_config


def train(tmp_path, toy, resume=False, **overrides) -> Trainer:
    trainer = Trainer(tiny_config(**overrides), tmp_path / "run", TinyCNN(), toy, resume=resume, progress=False, log=lambda s: None)
    trainer.run()
    return trainer


def records(tmp_path, kind):
    return [r for r in read_jsonl(tmp_path / "run" / "metrics.jsonl") if r["kind"] == kind]


# ---- config -----------------------------------------------------------------------------------------
def test_config_round_trips_through_yaml(tmp_path):
    cfg = tiny_config(**{"env.lr": 0.02, "ppo.gamma": 0.95}).resolved()
    config_io.save_yaml(cfg, tmp_path / "c.yaml")
    again = load_config(tmp_path / "c.yaml")
    assert again == cfg
    assert again.reward.gamma == 0.95  # the shaping discount follows PPO's
    assert "conv_enhance" in again.blueprints and "linear" in again.blends


def test_config_files_may_be_partial_and_strict(tmp_path):
    (tmp_path / "part.yaml").write_text("episodes: 5\nenv: {epochs: 3, lr: 1e-3}\nppo: {entropy_coef: {op: 0.05}}\n")
    cfg = load_config(tmp_path / "part.yaml")
    assert cfg.episodes == 5 and cfg.env.epochs == 3 and cfg.env.lr == 0.001 and cfg.env.batch_size == 128
    default = PPOConfig().entropy_coef["slot"]
    assert cfg.ppo.entropy_coef == {"op": 0.05, "slot": default, "blueprint": default, "blend": default}
    (tmp_path / "bad.yaml").write_text("env: {epoch: 3}\n")
    with pytest.raises(ValueError, match="env.epoch"):
        load_config(tmp_path / "bad.yaml")
    with pytest.raises(ValueError, match="unknown setting 'nope'"):
        config_io.with_overrides(cfg, {"nope": 1})


# ---- a run ---------------------------------------------------------------------------------------------
def test_a_run_writes_metrics_checkpoint_policy_and_tensorboard(tmp_path, toy):
    train(tmp_path, toy)
    run = tmp_path / "run"
    for name in ("config.yaml", "metrics.jsonl", "checkpoint.pt", "tamiyo.pt"):
        assert (run / name).is_file(), name
    assert list((run / "tb").glob("events.out.tfevents.*"))
    episodes, updates = records(tmp_path, "episode"), records(tmp_path, "update")
    assert [(r["episode"], r["env"]) for r in episodes] == [(0, 0), (1, 1)]
    for r in episodes:
        assert set(r["reward"]) >= {"task", "germination", "refund", "shaping", "terminal_acc", "param_cost"}
        assert {"return", "val_acc", "fossilized", "ops", "timeline"} <= set(r)
    (u,) = updates
    for key in (
        "entropy_norm/op",
        "entropy/slot",
        "approx_kl",
        "clip_fraction",
        "value_loss",
        "explained_variance",
        "actions",
        "blueprints",
        "wait_fraction",
        "fossilized_per_episode",
        "reward",
        "warnings",
        "throughput",
    ):
        assert key in u, key
    assert sum(u["actions"].values()) == 2 * 2  # two envs x two decisions
    assert u["throughput"]["images_per_second"] > 0
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["episodes"] == 2 and saved["env"]["epochs"] == 2
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    assert state["episodes_done"] == 2 and state["updates_done"] == 1
    assert {"policy", "optimizer", "rng", "history"} <= set(state)
    policy, cfg = load_policy(run / "tamiyo.pt")
    assert cfg.hidden == 16 and policy.vocab.blend_steps == 2


def test_resume_after_a_kill_loses_and_repeats_nothing(tmp_path, toy):
    train(tmp_path, toy)  # 2 episodes, checkpointed
    path = tmp_path / "run" / "metrics.jsonl"
    # A kill after logging the next round but before its checkpoint: the log runs ahead.
    with open(path, "a") as f:
        f.write(json.dumps({"kind": "episode", "phase": "ppo", "episode": 2, "env": 0}) + "\n")
        f.write(json.dumps({"kind": "update", "update": 1}) + "\n")
        f.write('{"kind": "episo')  # torn last line
    trainer = train(tmp_path, toy, resume=True, episodes=4)
    assert trainer.state.episodes_done == 4 and trainer.state.updates_done == 2
    episodes = records(tmp_path, "episode")
    assert sorted(r["episode"] for r in episodes) == [0, 1, 2, 3]
    assert [r["update"] for r in records(tmp_path, "update")] == [0, 1]
    assert len(records(tmp_path, "run")) == 2

    # An uninterrupted run to 4 episodes ends with the very same policy, bit for bit: the
    # checkpoint restores every piece of state (weights, optimizer moments, RNG streams),
    # so in this process both runs do the same operations on the same values in the same
    # order. Any tolerance here would let a lost piece of state (an RNG draw, an Adam
    # moment) through as "rounding".
    straight = Trainer(tiny_config(episodes=4), tmp_path / "straight", TinyCNN(), toy, progress=False)
    straight.run()
    resumed = torch.load(tmp_path / "run" / "tamiyo.pt", weights_only=True)["policy"]
    uninterrupted = torch.load(tmp_path / "straight" / "tamiyo.pt", weights_only=True)["policy"]
    assert resumed.keys() == uninterrupted.keys()
    for key, value in uninterrupted.items():
        if isinstance(value, torch.Tensor):
            torch.testing.assert_close(resumed[key], value, rtol=0, atol=0, msg=named(key))


def test_resume_refuses_changed_settings(tmp_path, toy):
    train(tmp_path, toy)
    with pytest.raises(ValueError, match="env.lr"):
        Trainer(tiny_config(**{"env.lr": 0.5}), tmp_path / "run", TinyCNN(), toy, resume=True, progress=False, log=lambda s: None)


def test_warm_start_clones_the_heuristic_first(tmp_path, toy):
    # Six epochs: the heuristic germinates after three, so the teacher does more than WAIT,
    # which an untrained policy might pick greedily anyway. Enough cloning to fit these pairs.
    train(tmp_path, toy, warm_start=2, episodes=2, **{"env.epochs": 6, "imitation.max_epochs": 60, "imitation.learning_rate": 1e-2})
    warm = records(tmp_path, "warm_start")
    assert len(warm) == 1 and warm[0]["pairs"] == 2 * 6
    assert any(r["germinated"] for r in records(tmp_path, "episode") if r["phase"] == "warm_start")
    assert warm[0]["agreement"] == 1.0 and warm[0]["losses"][-1] < warm[0]["losses"][0]
    assert warm[0]["value_loss"] is not None and "explained_variance" in warm[0]
    phases = [r["phase"] for r in records(tmp_path, "episode")]
    assert phases == ["warm_start", "warm_start", "ppo", "ppo"]


def test_load_policy_refuses_other_files(tmp_path):
    torch.save({"weights": 1}, tmp_path / "x.pt")
    with pytest.raises(ValueError, match="not a Tamiyo policy"):
        load_policy(tmp_path / "x.pt")
    (tmp_path / "junk.pt").write_text("junk")
    with pytest.raises(ValueError, match="not a Tamiyo policy"):
        load_policy(tmp_path / "junk.pt")
    with pytest.raises(FileNotFoundError):
        load_policy(tmp_path / "missing.pt")
