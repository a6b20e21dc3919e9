"""PPO: GAE by hand, learning a bandit, update metrics, KL early stop, health warnings."""

from __future__ import annotations

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
    make_optimizer,
    masks_for,
    ppo_update,
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


def _bandit_probability(policy, obs) -> float:
    batch = batch_observations([obs])
    target = torch.tensor([[Op.GERMINATE, 1, 0, 0]])
    log_prob, _, _ = policy.evaluate(batch, target, masks_for(batch, target))
    return math.exp(log_prob.item())


def test_ppo_learns_a_bandit():
    """GERMINATE in slot 1 pays 1, anything else 0; one-step episodes."""
    torch.manual_seed(0)
    # One blueprint and one blend: those heads are forced, so the target's probability is
    # P(op = GERMINATE) * P(slot = 1 | GERMINATE), 0.25 for a uniform policy.
    obs_list = [make_observation([SeedStage.DORMANT, SeedStage.DORMANT], seed=s, blueprints=["noop"], blends=["linear"]) for s in range(16)]
    policy = TamiyoPolicy(Vocabulary(["noop"], ["linear"], STEPS), hidden=32)
    cfg = PPOConfig(learning_rate=3e-3, minibatch_size=32, update_epochs=4, target_kl=None)
    optimizer = make_optimizer(policy, cfg)
    before = _bandit_probability(policy, obs_list[0])
    history = []
    for _ in range(10):
        buffer = RolloutBuffer(len(obs_list))
        for _ in range(2):
            sample = policy.act(batch_observations(obs_list))
            rewards = [float(a[0] == Op.GERMINATE and a[1] == 1) for a in sample.actions.tolist()]
            buffer.add(obs_list, sample, rewards, [True] * len(obs_list))
        buffer.compute_returns(torch.zeros(len(obs_list)), cfg.gamma, cfg.gae_lambda)
        history.append(ppo_update(policy, optimizer, buffer, cfg))
    after = _bandit_probability(policy, obs_list[0])
    assert 0.23 < before < 0.27
    assert after > 0.6, (before, after)

    metrics = history[-1]
    for key in ("policy_loss", "value_loss", "approx_kl", "clip_fraction"):
        assert math.isfinite(metrics[key]), key
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
    buffer.compute_returns(torch.zeros(len(obs_list)), cfg.gamma, cfg.gae_lambda)
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


# ---- the update's parts, one full-batch step each --------------------------------------------------
class Recording(torch.optim.SGD):
    """Plain SGD that keeps the gradient norm it was handed, after PPO's clipping."""

    def __init__(self, params):
        self.params = list(params)
        super().__init__(self.params, lr=0.1)
        self.grad_norms = []

    def step(self, closure=None):
        self.grad_norms.append(float(torch.cat([p.grad.flatten() for p in self.params if p.grad is not None]).norm()))
        return super().step(closure)


def _one_step(advantages=None, seed=0, **overrides):
    """One PPO step over one full batch; returns the policy, the optimizer and the gradient."""
    torch.manual_seed(seed)
    obs_list = [make_observation([SeedStage.DORMANT, SeedStage.TRAINING, SeedStage.BLENDING], seed=s) for s in range(16)]
    policy = TamiyoPolicy(VOCAB, hidden=32)
    settings = dict(
        minibatch_size=16,
        update_epochs=1,
        target_kl=None,
        value_coef=0.0,
        entropy_floor_coef=0.0,
        entropy_coef={h: 0.0 for h in HEADS},
        max_grad_norm=1e9,
    )
    cfg = PPOConfig(**{**settings, **overrides})
    buffer = RolloutBuffer(len(obs_list))
    sample = policy.act(batch_observations(obs_list))
    buffer.add(obs_list, sample, torch.randn(len(obs_list)).tolist(), [True] * len(obs_list))
    buffer.compute_returns(torch.zeros(len(obs_list)), cfg.gamma, cfg.gae_lambda)
    if advantages is not None:
        buffer.advantages = advantages(buffer.advantages)
    optimizer = Recording(policy.parameters())
    before = [p.detach().clone() for p in policy.parameters()]
    ppo_update(policy, optimizer, buffer, cfg)
    step = torch.cat([(p.detach() - b).flatten() for p, b in zip(policy.parameters(), before)])
    return policy, optimizer, step, obs_list


def test_gradients_are_clipped_to_max_grad_norm():
    _, free, _, _ = _one_step()
    assert free.grad_norms[0] > 0.01  # so that the clip below has something to cut
    _, clipped, step, _ = _one_step(max_grad_norm=0.01)
    assert clipped.grad_norms[0] == pytest.approx(0.01, rel=1e-4)
    assert float(step.norm()) == pytest.approx(0.1 * 0.01, rel=1e-3)  # SGD moved by lr times the clipped gradient


def _sixteenths(a):
    """Advantages on a grid of 1/16: then a * 4 + 3, their mean (a sum over 16 rows, over
    16) and each deviation from it are exact in fp32, the deviations' squares and sum are
    exact in the float64 torch accumulates the variance in, and a square root scales
    exactly by 4. So normalising 4 a + 3 gives the same bits as normalising a; a scale
    of 10 would round differently, and leave a step that differs by rounding."""
    a = (16 * a).round() / 16
    assert a.std() >= 0.25  # so that the + 1e-8 under the division rounds away in both
    return a


def test_advantages_are_normalised_per_minibatch():
    # Normalised, a positive affine change of the advantages leaves the policy step as it was,
    # to the bit (see _sixteenths): a missed mean or deviation changes it by far more.
    _, _, step, _ = _one_step(advantages=_sixteenths)
    _, _, shifted, _ = _one_step(advantages=lambda a: 4 * _sixteenths(a) + 3)
    torch.testing.assert_close(shifted, step, rtol=0, atol=0)
    _, _, raw, _ = _one_step(advantages=_sixteenths, normalize_advantages=False)
    _, _, raw_shifted, _ = _one_step(advantages=lambda a: 4 * _sixteenths(a) + 3, normalize_advantages=False)
    assert not torch.allclose(raw_shifted, raw, rtol=1e-2)


def _op_entropy(policy, obs_list):
    batch = batch_observations(obs_list)
    sample = policy.act(batch)
    _, entropy, _ = policy.evaluate(batch, sample.actions, sample.masks)
    return float(entropy["op"].detach().mean())


def test_the_entropy_floor_pushes_a_head_back_up_and_is_silent_above_it():
    # No policy, value or entropy-bonus term: only the floor's penalty can move the policy.
    zero = lambda a: torch.zeros_like(a)  # noqa: E731
    floors = {h: 2.0 for h in HEADS}  # above any normalised entropy: the penalty is active on every head
    base, _, _, obs_list = _one_step(advantages=zero, normalize_advantages=False, entropy_floor_coef=0.0)
    pushed, _, step, _ = _one_step(advantages=zero, normalize_advantages=False, entropy_floor_coef=5.0, entropy_floor=floors)
    assert float(step.abs().max()) > 0
    assert _op_entropy(pushed, obs_list) > _op_entropy(base, obs_list)
    below = {h: 0.0 for h in HEADS}  # met everywhere: relu(0 - entropy) = 0, nothing to push
    _, _, silent, _ = _one_step(advantages=zero, normalize_advantages=False, entropy_floor_coef=5.0, entropy_floor=below)
    assert float(silent.abs().max()) == 0.0
