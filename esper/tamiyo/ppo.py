"""PPO for TamiyoPolicy, CleanRL style: config, rollout buffer with GAE, one update, health checks.

A training loop does, per iteration:

    buffer = RolloutBuffer(num_envs)
    for each step: sample = policy.act(batch_observations(obs)); edits = [policy.vocab.to_edit(sample.row(i), o) ...]
                   ...apply edits, get rewards and dones...; buffer.add(obs, sample, rewards, dones)
    buffer.compute_returns(last_value, cfg.gamma, cfg.gae_lambda)
    metrics = ppo_update(policy, optimizer, buffer, cfg)
    history.append(metrics); for w in health_warnings(history, cfg): print(w)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import torch
from torch import Tensor, nn

from esper.leyline import MAX_BLENDS, MAX_BLUEPRINTS, NUM_OPS, Observation, ObservationBatch, Op, batch_observations
from esper.tamiyo.actions import HEADS, ActionMasks
from esper.tamiyo.policy import ActionSample, TamiyoPolicy


def _per_head(value: float) -> dict[str, float]:
    return {head: value for head in HEADS}


@dataclass
class PPOConfig:
    """Every PPO hyperparameter, with its default."""

    learning_rate: float = 3e-4
    adam_eps: float = 1e-5
    gamma: float = 0.99
    gae_lambda: float = 0.95
    clip_coef: float = 0.2
    update_epochs: int = 4
    minibatch_size: int = 64
    normalize_advantages: bool = True
    value_coef: float = 0.5
    max_grad_norm: float = 0.5
    # Stop the update as soon as a minibatch's approximate KL exceeds this (None: never).
    target_kl: float | None = 0.03
    # Entropy bonus per head, averaged over the rows where that head had a real choice:
    # germinations are rare, and averaging over forced rows would shrink their bonus.
    entropy_coef: dict[str, float] = field(default_factory=lambda: _per_head(0.01))
    # Normalised entropy (entropy / log(#choices)) below which a hinge penalty pushes back;
    # guards against the collapse onto WAIT the reference implementation suffered.
    entropy_floor: dict[str, float] = field(default_factory=lambda: _per_head(0.1))
    entropy_floor_coef: float = 0.5
    # health_warnings: look at this many recent updates for these symptoms.
    health_window: int = 5
    health_entropy_min: float = 0.05
    health_explained_variance_min: float = 0.05
    health_wait_max: float = 0.99


def make_optimizer(policy: nn.Module, cfg: PPOConfig) -> torch.optim.Optimizer:
    return torch.optim.Adam(policy.parameters(), lr=cfg.learning_rate, eps=cfg.adam_eps)


def compute_gae(
    rewards: Tensor, values: Tensor, dones: Tensor, last_value: Tensor, gamma: float, gae_lambda: float
) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimates and returns for [T, E] rollouts.

    dones[t] is 1 when the transition at step t ended its episode (so nothing after it
    is bootstrapped); last_value [E] is the value of the observation after step T-1.
    """
    steps = rewards.shape[0]
    advantages = torch.zeros_like(rewards)
    running = torch.zeros_like(last_value)
    for t in reversed(range(steps)):
        next_value = last_value if t == steps - 1 else values[t + 1]
        alive = 1.0 - dones[t]
        delta = rewards[t] + gamma * next_value * alive - values[t]
        running = delta + gamma * gae_lambda * alive * running
        advantages[t] = running
    return advantages, advantages + values


class RolloutBuffer:
    """Transitions of E environments over T steps. Observations are kept per environment
    (slot counts differ between hosts) and re-batched, padded, per minibatch."""

    def __init__(self, num_envs: int):
        self.num_envs = num_envs
        self.observations: list[Observation] = []  # step-major: index t * E + e
        self.slot_masks: list[Tensor] = []  # [N_e] each, trimmed to the observation's slots
        self.actions: list[Tensor] = []  # [E, 4] per step
        self.op_masks: list[Tensor] = []
        self.blueprint_masks: list[Tensor] = []
        self.blend_masks: list[Tensor] = []
        self.log_probs: list[Tensor] = []
        self.values: list[Tensor] = []
        self.rewards: list[Tensor] = []
        self.dones: list[Tensor] = []
        self.advantages: Tensor | None = None  # [T * E] once compute_returns ran
        self.returns: Tensor | None = None
        self.flat: dict[str, Tensor] = {}  # the per-step lists above, concatenated by compute_returns

    def __len__(self) -> int:
        return len(self.observations)

    def add(self, observations: Sequence[Observation], sample: ActionSample, rewards: Sequence[float], dones: Sequence[bool]) -> None:
        if not len(observations) == len(rewards) == len(dones) == self.num_envs:
            raise ValueError(f"expected {self.num_envs} observations, rewards and dones")
        masks = sample.masks
        for i, obs in enumerate(observations):
            self.observations.append(obs)
            self.slot_masks.append(masks.slot[i, : obs.num_slots].cpu())
        self.actions.append(sample.actions.cpu())
        self.op_masks.append(masks.op.cpu())
        self.blueprint_masks.append(masks.blueprint.cpu())
        self.blend_masks.append(masks.blend.cpu())
        self.log_probs.append(sample.log_prob.cpu())
        self.values.append(sample.value.cpu())
        self.rewards.append(torch.as_tensor(rewards, dtype=torch.float32))
        self.dones.append(torch.as_tensor(dones, dtype=torch.float32))
        self.advantages = self.returns = None  # stale until compute_returns runs again

    def compute_returns(self, last_value: Tensor, gamma: float, gae_lambda: float) -> None:
        """GAE over the stored steps; last_value [E] is V of the next observations."""
        advantages, returns = compute_gae(
            torch.stack(self.rewards),
            torch.stack(self.values),
            torch.stack(self.dones),
            last_value.detach().float().cpu(),
            gamma,
            gae_lambda,
        )
        self.advantages, self.returns = advantages.flatten(), returns.flatten()
        self.flat = {
            name: torch.cat(getattr(self, name))
            for name in ("actions", "op_masks", "blueprint_masks", "blend_masks", "log_probs", "values")
        }

    def minibatch(self, index: Tensor) -> tuple[ObservationBatch, Tensor, ActionMasks, Tensor, Tensor, Tensor]:
        """(observations, actions, masks, old log-probs, advantages, returns) for flat indices."""
        rows = index.tolist()
        batch = batch_observations([self.observations[i] for i in rows])
        slot = torch.zeros(len(rows), batch.num_slots, dtype=torch.bool)
        for j, i in enumerate(rows):
            slot[j, : len(self.slot_masks[i])] = self.slot_masks[i]
        masks = ActionMasks(
            op=self.flat["op_masks"][index],
            slot=slot,
            blueprint=self.flat["blueprint_masks"][index],
            blend=self.flat["blend_masks"][index],
        )
        return (
            batch,
            self.flat["actions"][index],
            masks,
            self.flat["log_probs"][index],
            self.advantages[index],
            self.returns[index],
        )


def explained_variance(predicted: Tensor, target: Tensor) -> float:
    """1 - Var(target - predicted) / Var(target); nan when the target is constant."""
    var = target.var(unbiased=False)
    if var == 0:
        return math.nan
    return float(1 - (target - predicted).var(unbiased=False) / var)


def mean_or_nan(values) -> float:
    """The mean of an iterable of numbers; NaN (unknown, not zero) when it is empty."""
    values = list(values)
    return sum(values) / len(values) if values else math.nan


def ppo_update(policy: TamiyoPolicy, optimizer: torch.optim.Optimizer, buffer: RolloutBuffer, cfg: PPOConfig) -> dict:
    """Clipped-surrogate PPO epochs over the buffer; returns the update's metrics."""
    if buffer.advantages is None:
        raise RuntimeError("call buffer.compute_returns(last_value, gamma, gae_lambda) before ppo_update")
    n = len(buffer)
    names = ["policy_loss", "value_loss", "approx_kl", "clip_fraction"]
    names += [f"entropy/{h}" for h in HEADS] + [f"entropy_norm/{h}" for h in HEADS]
    stats: dict[str, list[float]] = {name: [] for name in names}
    kl_early_stop = False
    for _ in range(cfg.update_epochs):
        order = torch.randperm(n)
        for start in range(0, n, cfg.minibatch_size):
            index = order[start : start + cfg.minibatch_size]
            batch, actions, masks, old_log_prob, advantages, returns = buffer.minibatch(index)
            log_prob, entropy, value = policy.evaluate(batch, actions, masks)
            advantages, returns = advantages.to(value.device), returns.to(value.device)
            log_ratio = log_prob - old_log_prob.to(value.device)
            ratio = log_ratio.exp()
            with torch.no_grad():
                # The k3 estimator of KL(old || new): unbiased and always >= 0.
                approx_kl = float(((ratio - 1) - log_ratio).mean())
            if cfg.target_kl is not None and approx_kl > cfg.target_kl:
                kl_early_stop = True
                break
            if cfg.normalize_advantages and len(advantages) > 1:
                advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)

            policy_loss = torch.max(-advantages * ratio, -advantages * ratio.clamp(1 - cfg.clip_coef, 1 + cfg.clip_coef)).mean()
            value_loss = 0.5 * (value - returns).pow(2).mean()
            entropy_bonus = value.new_zeros(())
            floor_penalty = value.new_zeros(())
            for head in HEADS:
                choices = masks[head].sum(-1).to(value.device)
                free = choices > 1
                if not bool(free.any()):
                    continue
                head_entropy = entropy[head][free]
                normalised = (head_entropy / choices[free].float().log()).mean()
                entropy_bonus = entropy_bonus + cfg.entropy_coef[head] * head_entropy.mean()
                floor_penalty = floor_penalty + torch.relu(cfg.entropy_floor[head] - normalised)
                stats[f"entropy/{head}"].append(float(head_entropy.detach().mean()))
                stats[f"entropy_norm/{head}"].append(float(normalised.detach()))
            loss = policy_loss - entropy_bonus + cfg.value_coef * value_loss + cfg.entropy_floor_coef * floor_penalty

            optimizer.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(policy.parameters(), cfg.max_grad_norm)
            optimizer.step()

            stats["policy_loss"].append(float(policy_loss.detach()))
            stats["value_loss"].append(float(value_loss.detach()))
            stats["approx_kl"].append(approx_kl)
            stats["clip_fraction"].append(float(((ratio.detach() - 1).abs() > cfg.clip_coef).float().mean()))
        if kl_early_stop:
            break

    actions = buffer.flat["actions"]
    germinate = actions[:, 0] == Op.GERMINATE
    metrics = {name: mean_or_nan(values) for name, values in stats.items()}
    metrics.update(
        minibatches=len(stats["policy_loss"]),
        kl_early_stop=kl_early_stop,
        explained_variance=explained_variance(buffer.flat["values"], buffer.returns),
        op_counts=torch.bincount(actions[:, 0], minlength=NUM_OPS).tolist(),
        blueprint_counts=torch.bincount(actions[germinate, 2], minlength=MAX_BLUEPRINTS).tolist(),
        blend_counts=torch.bincount(actions[germinate, 3], minlength=MAX_BLENDS).tolist(),
    )
    return metrics


def health_warnings(metrics_history: list[dict], cfg: PPOConfig | None = None) -> list[str]:
    """Symptoms that sank the reference implementation, over the last cfg.health_window
    updates: a head whose entropy stays near zero, a critic that explains nothing, a
    policy that does nothing but WAIT."""
    cfg = cfg or PPOConfig()
    recent = metrics_history[-cfg.health_window :]
    if len(recent) < cfg.health_window:
        return []
    warnings = []
    for head in HEADS:
        known = [m[f"entropy_norm/{head}"] for m in recent if not math.isnan(m[f"entropy_norm/{head}"])]
        if known and max(known) < cfg.health_entropy_min:
            warnings.append(
                f"{head} head entropy has stayed below {cfg.health_entropy_min} (normalised) for "
                f"{len(recent)} updates: the head has collapsed; raise entropy_coef['{head}'] or entropy_floor"
            )
    ev = [m["explained_variance"] for m in recent]
    if all(math.isnan(v) or v < cfg.health_explained_variance_min for v in ev):
        warnings.append(
            f"explained variance has stayed below {cfg.health_explained_variance_min} for {len(recent)} "
            "updates: the critic predicts nothing; check reward scale and observation features"
        )
    ops = [sum(m["op_counts"][op] for m in recent) for op in range(NUM_OPS)]
    if sum(ops) and ops[Op.WAIT] / sum(ops) >= cfg.health_wait_max:
        warnings.append(
            f"{ops[Op.WAIT] / sum(ops):.1%} of the last {len(recent)} updates' actions were WAIT: the policy has stopped growing anything"
        )
    return warnings
