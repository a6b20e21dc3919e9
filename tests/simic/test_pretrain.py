"""Pretraining across hosts: clone, DAgger, then PPO on groups of rollouts that share a seed."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from esper.simic.pretrain import PretrainConfig, Pretrainer, downsampled
from esper.tamiyo import ImitationConfig
from tests.simic.toys import toy_data


def test_a_tiny_pretraining_clones_then_updates_on_twin_relative_groups():
    cfg = PretrainConfig(
        hosts=["plain-w8-b4", "inverted-w8-b3"], hidden=16, clone_episodes=2, dagger_rounds=1, dagger_episodes=2,
        updates=1, groups=2, group_size=2, imitation=ImitationConfig(max_epochs=10),
    )  # fmt: skip
    cfg.env = dataclasses.replace(cfg.env, epochs=3, batch_size=32, contribution_samples=32)
    torch.manual_seed(0)
    trainer = Pretrainer(cfg, toy_data())
    logged = []
    trainer.run(log=logged.append)
    assert logged[0].startswith("clone:") and logged[1].startswith("dagger 1:") and logged[2].startswith("update 1/1")
    # 2 + 2 imitation episodes and 2 groups: 6 (host, seed) pairs, alternating hosts, each twin run once
    assert trainer._pair == 6
    twins = {host: envs[0]._twins for host, envs in trainer.envs.items()}
    assert [len(t) for t in twins.values()] == [3, 3] and all(envs[0]._twins is envs[1]._twins for envs in trainer.envs.values())
    record = trainer.history[-1]
    assert record["episodes"] == 4 and set(record["return_by_host"]) == set(cfg.hosts)
    assert 0.0 <= record["teacher_agreement"] <= 1.0


def _tiny(updates: int) -> PretrainConfig:
    cfg = PretrainConfig(
        hosts=["plain-w8-b4", "inverted-w8-b3"], hidden=16, clone_episodes=2, dagger_rounds=0,
        updates=updates, groups=1, group_size=2, imitation=ImitationConfig(max_epochs=5),
    )  # fmt: skip
    cfg.env = dataclasses.replace(cfg.env, epochs=2, batch_size=32, contribution_samples=32)
    return cfg


def test_a_killed_pretraining_resumes_from_its_checkpoint_as_if_never_stopped(tmp_path):
    torch.manual_seed(0)
    whole = Pretrainer(_tiny(2), toy_data()).run(log=lambda _: None)
    ckpt = tmp_path / "pretrain.ckpt"
    torch.manual_seed(0)
    Pretrainer(_tiny(1), toy_data()).run(log=lambda _: None, checkpoint=ckpt)  # stopped after one update
    torch.manual_seed(123)  # whatever the new process's RNG: the checkpoint's comes back
    resumed = Pretrainer(_tiny(2), toy_data())
    logged = []
    policy = resumed.run(log=logged.append, checkpoint=ckpt)
    assert logged[0].startswith("resumed from") and logged[1].startswith("update 2/2") and len(logged) == 2
    assert [r["update"] for r in resumed.history[1:]] == [0, 1]
    mine = dict(policy.named_parameters())
    for name, value in whole.named_parameters():
        assert torch.equal(value, mine[name]), name
    other = dataclasses.replace(_tiny(2), hidden=8)
    with pytest.raises(ValueError, match="other settings.*hidden"):
        Pretrainer(other, toy_data()).run(log=lambda _: None, checkpoint=ckpt)
    ckpt.write_bytes(ckpt.read_bytes()[:100])
    with pytest.raises(ValueError, match="truncated"):
        Pretrainer(_tiny(2), toy_data()).run(log=lambda _: None, checkpoint=ckpt)


def test_bad_configs_are_refused():
    with pytest.raises(ValueError, match="unknown hosts"):
        PretrainConfig(hosts=["no-such-host"])
    with pytest.raises(ValueError, match="group_size"):
        PretrainConfig(group_size=1)


def test_downsampled_pools_images_to_the_proxy_size():
    data = downsampled(toy_data(), 8)
    assert data.train.x.shape[-2:] == (8, 8) and torch.allclose(data.train.x.mean(), toy_data().train.x.mean(), atol=1e-5)
