"""PPO: GAE and leave-one-out advantages by hand, learning a bandit, update metrics, KL early
stop, the teacher schedule, health warnings. The loss's parts: test_ppo_loss.py."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from esper.leyline import NUM_OPS, Op, SeedStage, Vocabulary, batch_observations
from esper.tamiyo import (
    HEADS,
    PPOConfig,
    RolloutBuffer,
    TamiyoPolicy,
    compute_gae,
    health_warnings,
    loo_advantages,
    make_optimizer,
    masks_for,
    ppo_update,
    teacher_coef_at,
)
from tests.tamiyo.factory import STEPS, VOCAB, make_observation


def test_gae_matches_a_hand_computation():
    # Env 0: rewards 1, 2, 3 with an episode end after step 1. Env 1: no ends.
    rewards = torch.tensor([[1.0, 0.0], [2.0, 0.0], [3.0, 1.0]])
    values = torch.tensor([[0.5, 0.0], [1.0, 0.0], [1.5, 0.0]])
    dones = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 0.0]])
    last_value = torch.tensor([2.0, 1.0])
    gamma, lam = 0.9, 0.8
    advantages, returns = compute_gae(rewards, values, dones, last_value, gamma, lam)
    # Env 0, backwards: t=2: 3 + 0.9*2 - 1.5 = 3.3; t=1 (ended): 2 - 1 = 1.0;
    # t=0: delta 1 + 0.9*1.0 - 0.5 = 1.4, plus 0.9*0.8*1.0 = 2.12.
    # Env 1: t=2: 1 + 0.9*1 = 1.9; t=1: 0.72*1.9 = 1.368; t=0: 0.72*1.368 = 0.98496.
    expected = torch.tensor([[2.12, 0.98496], [1.0, 1.368], [3.3, 1.9]])
    torch.testing.assert_close(advantages, expected)
    torch.testing.assert_close(returns, expected + values)


# Leave-one-out, by hand, gamma 0.5, two steps, six environments in groups {0, 1}, {2, 3, 4}, {5}.
LOO_REWARDS = torch.tensor([[1.0, 0.0, 2.0, 4.0, 0.0, 1.0], [2.0, 4.0, 0.0, 2.0, 6.0, 3.0]])
LOO_VALUES = torch.tensor([[0.0, 0.0, 0.0, 0.0, 0.0, 1.0], [0.0, 0.0, 0.0, 0.0, 0.0, 0.5]])
LOO_GROUPS = [7, 7, 3, 3, 3, 9]  # any ids: only equality matters
# Returns-to-go: G[1] = r[1]; G[0] = r[0] + 0.5 r[1] = 2, 2, 2, 5, 3, 2.5.
LOO_RETURNS = torch.tensor([[2.0, 2.0, 2.0, 5.0, 3.0, 2.5], [2.0, 4.0, 0.0, 2.0, 6.0, 3.0]])
LOO_EXPECTED = torch.tensor(
    [
        # {0, 1}: each minus the other. {2, 3, 4}: 2 - (5+3)/2, 5 - (2+3)/2, 3 - (2+5)/2.
        # 5 is alone: G - V = 2.5 - 1.0.
        [0.0, 0.0, -2.0, 2.5, -0.5, 1.5],
        # 2 - 4, 4 - 2; 0 - (2+6)/2, 2 - (0+6)/2, 6 - (0+2)/2; 3 - 0.5.
        [-2.0, 2.0, -4.0, -1.0, 5.0, 2.5],
    ]
)


def test_loo_advantages_match_a_hand_computation():
    advantages, returns = loo_advantages(LOO_REWARDS, LOO_VALUES, torch.tensor(LOO_GROUPS), 0.5)
    torch.testing.assert_close(returns, LOO_RETURNS)
    torch.testing.assert_close(advantages, LOO_EXPECTED)


def _loo_buffer(dones: list[list[bool]], groups=LOO_GROUPS) -> RolloutBuffer:
    """A buffer of LOO_REWARDS over one-slot observations, the critic's values set to LOO_VALUES."""
    torch.manual_seed(0)
    policy = TamiyoPolicy(VOCAB, hidden=16)
    buffer = RolloutBuffer(len(groups))
    for t, step_dones in enumerate(dones):
        obs_list = [make_observation([SeedStage.DORMANT], seed=10 * t + e) for e in range(len(groups))]
        sample = dataclasses.replace(policy.act(batch_observations(obs_list)), value=LOO_VALUES[t])
        buffer.add(obs_list, sample, LOO_REWARDS[t].tolist(), step_dones, groups=groups)
    return buffer


def test_the_buffer_computes_loo_advantages_for_whole_episodes_and_refuses_others():
    buffer = _loo_buffer([[False] * 6, [True] * 6])
    buffer.compute_returns(PPOConfig(advantages="loo", gamma=0.5))
    torch.testing.assert_close(buffer.advantages, LOO_EXPECTED.flatten())  # step-major, like the observations
    torch.testing.assert_close(buffer.returns, LOO_RETURNS.flatten())

    ragged = [[False, True, False, False, False, False], [True] * 6]  # env 1's episode ended at step 0
    cut = [[False] * 6, [False] * 5 + [True]]  # five episodes continue past the buffer
    for dones in (ragged, cut):
        with pytest.raises(ValueError, match="whole episodes"):
            _loo_buffer(dones).compute_returns(PPOConfig(advantages="loo"))
        _loo_buffer(dones).compute_returns(PPOConfig(advantages="gae"))  # GAE handles both
    regrouped = _loo_buffer([[False] * 6])
    obs_list = regrouped.observations[:6]
    sample = TamiyoPolicy(VOCAB, hidden=16).act(batch_observations(obs_list))
    with pytest.raises(ValueError, match="the same way at every step"):
        regrouped.add(obs_list, sample, [0.0] * 6, [True] * 6, groups=[0] * 6)
    with pytest.raises(ValueError, match="groups must name all 6 environments"):
        RolloutBuffer(6).add(obs_list, sample, [0.0] * 6, [True] * 6, groups=[0, 0, 1])
    with pytest.raises(ValueError, match="advantages must be"):
        PPOConfig(advantages="mc")


def test_the_teacher_weight_anneals_linearly_between_its_endpoints():
    cfg = PPOConfig(teacher_coef=1.0, teacher_coef_final=0.2, teacher_anneal_updates=10)
    assert teacher_coef_at(cfg, 0) == 1.0
    assert teacher_coef_at(cfg, 5) == pytest.approx(0.6)
    assert teacher_coef_at(cfg, 10) == pytest.approx(0.2)
    assert teacher_coef_at(cfg, 1000) == pytest.approx(0.2)  # stays at the final weight
    assert teacher_coef_at(dataclasses.replace(cfg, teacher_anneal_updates=0), 0) == 0.2


def _bandit_probability(policy, obs) -> float:
    batch = batch_observations([obs])
    target = torch.tensor([[Op.GERMINATE, 1, 0, 0]])
    log_prob, _, _ = policy.evaluate(batch, target, masks_for(batch, target))
    return math.exp(log_prob.item())


def test_ppo_learns_a_bandit():
    """GERMINATE in slot 1 pays 1, anything else 0; one-step episodes, each observation
    played by two environments of one group, each the other's leave-one-out baseline."""
    torch.manual_seed(0)
    # One blueprint and one blend: those heads are forced, so the target's probability is
    # P(op = GERMINATE) * P(slot = 1 | GERMINATE), 0.25 for a uniform policy.
    obs_list = [make_observation([SeedStage.DORMANT, SeedStage.DORMANT], seed=s, blueprints=["noop"], blends=["linear"]) for s in range(16)]
    policy = TamiyoPolicy(Vocabulary(["noop"], ["linear"], STEPS), hidden=32)
    cfg = PPOConfig(learning_rate=3e-3, minibatch_size=32, update_epochs=4, target_kl=None)
    optimizer = make_optimizer(policy, cfg)
    before = _bandit_probability(policy, obs_list[0])
    history = []
    envs = obs_list * 2
    for update in range(10):
        buffer = RolloutBuffer(len(envs))
        sample = policy.act(batch_observations(envs))
        rewards = [float(a[0] == Op.GERMINATE and a[1] == 1) for a in sample.actions.tolist()]
        buffer.add(envs, sample, rewards, [True] * len(envs), groups=list(range(len(obs_list))) * 2)
        buffer.compute_returns(cfg)
        history.append(ppo_update(policy, optimizer, buffer, cfg, update_index=update))
    after = _bandit_probability(policy, obs_list[0])
    assert 0.23 < before < 0.27
    assert after > 0.6, (before, after)

    metrics = history[-1]
    for key in ("policy_loss", "value_loss", "approx_kl", "clip_fraction"):
        assert math.isfinite(metrics[key]), key
    assert math.isnan(metrics["teacher_loss"]) and math.isnan(metrics["teacher_agreement"])  # no teacher
    assert metrics["teacher_coef"] == teacher_coef_at(cfg, 9)
    # nan only when every return was equal (e.g. the policy always won); rare early on.
    assert any(math.isfinite(m["explained_variance"]) for m in history)
    for head in HEADS:
        assert f"entropy/{head}" in metrics and f"entropy_norm/{head}" in metrics
    assert sum(metrics["op_counts"]) == 32 and len(metrics["op_counts"]) == NUM_OPS
    assert sum(metrics["blueprint_counts"]) == metrics["op_counts"][Op.GERMINATE] == sum(metrics["blend_counts"])
    assert metrics["kl_early_stop"] is False and metrics["minibatches"] == 4
    assert math.isnan(metrics["entropy/blueprint"])  # forced everywhere: no real choice to measure


def test_update_stops_early_on_kl():
    torch.manual_seed(1)
    obs_list = [make_observation([SeedStage.DORMANT, SeedStage.TRAINING, SeedStage.BLENDING], seed=s) for s in range(32)]
    policy = TamiyoPolicy(VOCAB, hidden=32)
    cfg = PPOConfig(learning_rate=1e-2, minibatch_size=8, update_epochs=4, target_kl=1e-6)
    buffer = RolloutBuffer(len(obs_list))
    sample = policy.act(batch_observations(obs_list))
    buffer.add(obs_list, sample, torch.randn(len(obs_list)).tolist(), [True] * len(obs_list))
    with pytest.raises(RuntimeError, match="compute_returns"):
        ppo_update(policy, make_optimizer(policy, cfg), buffer, cfg)
    buffer.compute_returns(cfg)
    metrics = ppo_update(policy, make_optimizer(policy, cfg), buffer, cfg)
    assert metrics["kl_early_stop"] is True
    assert 1 <= metrics["minibatches"] < 16


def _metrics(entropy: float, ev: float, ops: list[int]) -> dict:
    return {
        **{f"entropy_norm/{h}": entropy for h in HEADS},
        "entropy_norm/blueprint": math.nan,  # no germination in the update
        "explained_variance": ev,
        "op_counts": ops,
    }


def test_health_warnings_flag_collapse_dead_critic_and_wait_only():
    cfg = PPOConfig(health_window=3)
    healthy = [_metrics(0.6, 0.5, [50, 20, 10, 10, 10]) for _ in range(3)]
    assert health_warnings(healthy, cfg) == []
    assert health_warnings([_metrics(0.0, 0.0, [100, 0, 0, 0, 0])] * 2, cfg) == []  # too few updates

    sick = healthy[:1] + [_metrics(0.01, 0.01, [100, 0, 0, 0, 0]) for _ in range(3)]
    warnings = health_warnings(sick, cfg)
    text = "\n".join(warnings)
    for head in ("op", "slot", "blend"):
        assert f"{head} head entropy" in text
    assert "blueprint head" not in text  # unknown, not collapsed
    assert "explained variance" in text and "WAIT" in text
