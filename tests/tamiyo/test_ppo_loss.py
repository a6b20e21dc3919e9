"""PPO's loss, one full-batch SGD step at a time: gradient clipping (actor and critic apart),
advantages normalised over the whole rollout, the entropy bonus over every row, the entropy
floor, the teacher term, and a critic whose loss never reaches the actor."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import pytest
import torch

from esper.leyline import Op, SeedStage, batch_observations
from esper.tamiyo import HEADS, HeuristicPolicy, PPOConfig, RolloutBuffer, TamiyoPolicy, masks_for, ppo_update
from tests.tamiyo.factory import VOCAB, make_observation

LR = 0.1
NO_ENTROPY = {h: 0.0 for h in HEADS}


def zero(a):
    return torch.zeros_like(a)


def _grad_norm(params) -> float:
    grads = [p.grad.flatten() for p in params if p.grad is not None]
    return float(torch.cat(grads).norm()) if grads else 0.0


class Recording(torch.optim.SGD):
    """Plain SGD that keeps the actor's and the critic's gradient norms, and the actor's
    gradient, after PPO's clipping."""

    def __init__(self, policy: TamiyoPolicy):
        self.actor, self.critic = policy.actor_parameters(), list(policy.critic.parameters())
        super().__init__(policy.parameters(), lr=LR)
        self.norms: list[tuple[float, float]] = []
        self.actor_grads: list[torch.Tensor] = []

    def step(self, closure=None):
        self.norms.append((_grad_norm(self.actor), _grad_norm(self.critic)))
        self.actor_grads.append(_flat([p.grad for p in self.actor], self.actor))
        return super().step(closure)


def _flat(grads, params) -> torch.Tensor:
    """One vector of gradients, zeros where a parameter got none."""
    return torch.cat([(torch.zeros_like(p) if g is None else g).flatten() for g, p in zip(grads, params)])


def _moved(after, before) -> torch.Tensor:
    return torch.cat([(a.detach() - b.detach()).flatten() for a, b in zip(after, before)])


@dataclass
class Step:
    before: TamiyoPolicy  # a copy of the policy as the update found it
    after: TamiyoPolicy
    optimizer: Recording
    buffer: RolloutBuffer
    metrics: dict

    @property
    def actor_step(self) -> torch.Tensor:
        return _moved(self.after.actor_parameters(), self.before.actor_parameters())

    @property
    def critic_step(self) -> torch.Tensor:
        return _moved(self.after.critic.parameters(), self.before.critic.parameters())

    def everything(self):
        """The whole rollout as one minibatch."""
        return self.buffer.minibatch(torch.arange(len(self.buffer)))


def _one_step(advantages=None, teacher=False, seed=0, **overrides) -> Step:
    """One PPO update of one epoch over 16 one-step episodes; by default every term but the
    policy loss is off and nothing is clipped."""
    torch.manual_seed(seed)
    obs_list = [make_observation([SeedStage.DORMANT, SeedStage.TRAINING, SeedStage.BLENDING], seed=s) for s in range(16)]
    policy = TamiyoPolicy(VOCAB, hidden=32)
    settings = dict(
        minibatch_size=16,
        update_epochs=1,
        target_kl=None,
        value_coef=0.0,
        entropy_floor_coef=0.0,
        entropy_coef=NO_ENTROPY,
        max_grad_norm=1e9,
        teacher_coef=0.0,
        teacher_coef_final=0.0,
    )
    cfg = PPOConfig(**{**settings, **overrides})
    buffer = RolloutBuffer(len(obs_list))
    sample = policy.act(batch_observations(obs_list))
    teacher_actions = torch.tensor([tuple(a) for a in HeuristicPolicy(VOCAB).choose(obs_list)]) if teacher else None
    buffer.add(obs_list, sample, torch.randn(len(obs_list)).tolist(), [True] * len(obs_list), teacher_actions)
    buffer.compute_returns(cfg)
    if advantages is not None:
        buffer.advantages = advantages(buffer.advantages)
    before = copy.deepcopy(policy)
    optimizer = Recording(policy)
    metrics = ppo_update(policy, optimizer, buffer, cfg)
    return Step(before, policy, optimizer, buffer, metrics)


def test_actor_and_critic_gradients_are_clipped_to_max_grad_norm_apart():
    free = _one_step(value_coef=1.0)
    assert min(free.optimizer.norms[0]) > 0.01  # so that each clip below has something to cut
    clipped = _one_step(value_coef=1.0, max_grad_norm=0.01)
    actor, critic = clipped.optimizer.norms[0]
    assert actor == pytest.approx(0.01, rel=1e-4) and critic == pytest.approx(0.01, rel=1e-4)  # a joint clip leaves both below
    assert float(clipped.actor_step.norm()) == pytest.approx(LR * 0.01, rel=1e-3)


def _sixteenths(a):
    """Advantages on a grid of 1/16: then a * 4 + 3, their mean (a sum over 16 rows, over
    16) and each deviation from it are exact in fp32, the deviations' squares and sum are
    exact in the float64 torch accumulates the variance in, and a square root scales
    exactly by 4. So normalising 4 a + 3 gives the same bits as normalising a; a scale
    of 10 would round differently, and leave a step that differs by rounding."""
    a = (16 * a).round() / 16
    assert a.std() >= 0.25  # so that the + 1e-8 under the division rounds away in both
    return a


def test_advantages_are_normalised_once_over_the_whole_rollout():
    # Normalised, a positive affine change of the advantages leaves the policy step as it was,
    # to the bit (see _sixteenths): a missed mean or deviation changes it by far more.
    step = _one_step(advantages=_sixteenths).actor_step
    shifted = _one_step(advantages=lambda a: 4 * _sixteenths(a) + 3).actor_step
    torch.testing.assert_close(shifted, step, rtol=0, atol=0)
    raw = _one_step(advantages=_sixteenths, normalize_advantages=False).actor_step
    raw_shifted = _one_step(advantages=lambda a: 4 * _sixteenths(a) + 3, normalize_advantages=False).actor_step
    assert not torch.allclose(raw_shifted, raw, rtol=1e-2)

    # Two minibatches of 8: the update equals one on advantages normalised by hand over all
    # 16 rows and left alone; normalising each minibatch again would re-centre each half.
    def by_hand(a):
        return (a - a.mean()) / (a.std() + 1e-8)

    halves = _one_step(minibatch_size=8).actor_step
    done_by_hand = _one_step(advantages=by_hand, minibatch_size=8, normalize_advantages=False).actor_step
    torch.testing.assert_close(halves, done_by_hand, rtol=1e-4, atol=1e-8)


def test_the_entropy_bonus_is_a_mean_over_every_row():
    coefs = {"op": 0.3, "slot": 0.5, "blueprint": 1.0, "blend": 2.0}
    step = _one_step(advantages=zero, normalize_advantages=False, entropy_coef=coefs)
    mb = step.everything()
    _, entropy = step.before.evaluate_actor(mb.observations, mb.actions, mb.masks)
    bonus = sum(coefs[h] * entropy[h].mean() for h in HEADS)
    params = step.before.actor_parameters()
    expected = _flat(torch.autograd.grad(-bonus, params, allow_unused=True), params)
    assert float(expected.abs().max()) > 1e-5  # small near uniform, but not nothing
    torch.testing.assert_close(step.optimizer.actor_grads[0], expected, rtol=1e-5, atol=1e-11)

    # Blueprint and blend were forced wherever the op was not GERMINATE: averaged over all
    # rows their bonus is that fraction of the mean over the rows that had a choice.
    germinate = mb.actions[:, 0] == Op.GERMINATE
    assert 0 < int(germinate.sum()) < len(germinate)
    for head in ("blueprint", "blend"):
        assert (entropy[head][~germinate] == 0).all()
        all_rows, free_rows = entropy[head].mean(), entropy[head][germinate].mean()
        torch.testing.assert_close(all_rows, free_rows * germinate.float().mean())
        assert all_rows < free_rows


def _op_entropy(policy, buffer):
    mb = buffer.minibatch(torch.arange(len(buffer)))
    _, entropy = policy.evaluate_actor(mb.observations, mb.actions, mb.masks)
    return float(entropy["op"].detach().mean())


def test_the_entropy_floor_pushes_a_head_back_up_and_is_silent_above_it():
    # No policy, value or entropy-bonus term: only the floor's penalty can move the policy.
    floors = {h: 2.0 for h in HEADS}  # above any normalised entropy: the penalty is active on every head
    base = _one_step(advantages=zero, normalize_advantages=False)
    pushed = _one_step(advantages=zero, normalize_advantages=False, entropy_floor_coef=5.0, entropy_floor=floors)
    assert float(pushed.actor_step.abs().max()) > 0
    assert _op_entropy(pushed.after, pushed.buffer) > _op_entropy(base.after, base.buffer)
    below = {h: 0.0 for h in HEADS}  # met everywhere: relu(0 - entropy) = 0, nothing to push
    silent = _one_step(advantages=zero, normalize_advantages=False, entropy_floor_coef=5.0, entropy_floor=below)
    assert float(silent.actor_step.abs().max()) == 0.0


def test_the_teacher_term_raises_the_teacher_actions_log_prob():
    # Zero advantages and no other term: only the teacher's pull can move the policy.
    step = _one_step(advantages=zero, normalize_advantages=False, teacher=True, teacher_coef=1.0, teacher_coef_final=1.0)
    mb = step.everything()
    masks = masks_for(mb.observations, mb.teacher_actions)
    with torch.no_grad():
        before, _ = step.before.evaluate_actor(mb.observations, mb.teacher_actions, masks)
        after, _ = step.after.evaluate_actor(mb.observations, mb.teacher_actions, masks)
    assert float(after.sum()) > float(before.sum())
    assert float(step.critic_step.abs().max()) == 0.0
    assert step.metrics["teacher_loss"] == pytest.approx(-float(before.mean()), rel=1e-5)
    agrees = (mb.actions == mb.teacher_actions).all(-1).float().mean()
    assert step.metrics["teacher_agreement"] == pytest.approx(float(agrees))
    assert 0 < float(agrees) < 1

    off = _one_step(advantages=zero, normalize_advantages=False, teacher=True)  # weight 0
    assert float(off.actor_step.abs().max()) == 0.0


def test_illegal_teacher_actions_are_refused():
    obs_list = [make_observation([SeedStage.DORMANT], seed=s) for s in range(2)]
    policy = TamiyoPolicy(VOCAB, hidden=16)
    sample = policy.act(batch_observations(obs_list))
    with pytest.raises(ValueError, match="teacher op choices are illegal in rows \\[1\\]"):
        RolloutBuffer(2).add(obs_list, sample, [0.0, 0.0], [True, True], torch.tensor([[0, 0, 0, 0], [Op.FOSSILIZE, 0, 0, 0]]))


def test_the_value_loss_never_reaches_the_actor():
    torch.manual_seed(0)
    policy = TamiyoPolicy(VOCAB, hidden=16)
    batch = batch_observations([make_observation([SeedStage.DORMANT, SeedStage.TRAINING], seed=s) for s in range(4)])
    sample = policy.act(batch)
    log_prob, _, value = policy.evaluate(batch, sample.actions, sample.masks)
    value.sum().backward(retain_graph=True)
    assert all(p.grad is None for p in policy.actor_parameters())
    assert all(p.grad is not None for p in policy.critic.parameters())
    policy.zero_grad(set_to_none=True)
    log_prob.sum().backward()
    assert all(p.grad is None for p in policy.critic.parameters())
    assert len(policy.actor_parameters()) + len(list(policy.critic.parameters())) == len(list(policy.parameters()))

    # Through an update: a value loss alone moves the critic and leaves the actor as it was.
    step = _one_step(advantages=zero, normalize_advantages=False, value_coef=1.0)
    assert float(step.critic_step.abs().max()) > 0
    assert float(step.actor_step.abs().max()) == 0.0
