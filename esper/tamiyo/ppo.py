"""PPO for TamiyoPolicy, CleanRL style: config, rollout buffer, advantages (leave-one-out or
GAE), one update anchored to a teacher, health checks.

A training loop does, for updates u = 0, 1, ...:

    buffer = RolloutBuffer(num_envs)
    for each step: sample = policy.act(batch_observations(obs)); edits = [policy.vocab.to_edit(sample.row(i), o) ...]
                   ...apply edits, get rewards and dones...
                   buffer.add(obs, sample, rewards, dones, teacher_actions, groups)  # see RolloutBuffer.add
    buffer.compute_returns(cfg)
    metrics = ppo_update(policy, optimizer, buffer, cfg, update_index=u)
    history.append(metrics); for w in health_warnings(history, cfg): print(w)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import torch
from torch import Tensor, nn

from esper.leyline import MAX_BLENDS, MAX_BLUEPRINTS, NUM_OPS, Observation, ObservationBatch, Op, batch_observations
from esper.tamiyo.actions import HEADS, ActionMasks, check_legal, masks_for
from esper.tamiyo.policy import ActionSample, TamiyoPolicy

ADVANTAGES = ("loo", "gae")


def _per_head(value: float) -> dict[str, float]:
    return {head: value for head in HEADS}


@dataclass
class PPOConfig:
    """Every PPO hyperparameter, with why it has its default."""

    # CleanRL's Adam settings; eps above Adam's 1e-8 keeps steps sane when gradients are tiny.
    learning_rate: float = 3e-4
    adam_eps: float = 1e-5
    # A seed grown now pays off tens of decisions later, at the episode's end.
    gamma: float = 0.99
    # "loo": an action's return minus the mean return of the other episodes of its group
    # (same seed, same host) at the same step. That baseline already knows the host, the
    # data order and the step, which a critic would have to learn first; it needs whole
    # episodes in the buffer. "gae": generalised advantage estimation with the critic, for
    # rollouts that cut episodes.
    advantages: str = "loo"
    gae_lambda: float = 0.95  # "gae" only: CleanRL's bias/variance trade
    clip_coef: float = 0.2  # the PPO paper's
    # Every episode trains a network, so each rollout is reused; target_kl ends a pass early.
    update_epochs: int = 4
    # Pretraining collects >= 32 episodes of tens of decisions per update: about ten minibatches an epoch.
    minibatch_size: int = 128
    # Zero mean and unit deviation over the whole rollout, once: a minibatch's own mean
    # would re-centre its rows against each other and change which actions count as good.
    normalize_advantages: bool = True
    # The critic has a network of its own, so this only sets its loss scale against its own
    # gradient clip; CleanRL's value.
    value_coef: float = 0.5
    # Applied to the actor's and the critic's gradients separately (see ppo_update).
    max_grad_norm: float = 0.5
    # Stop the update as soon as a minibatch's approximate KL exceeds this (None: never).
    target_kl: float | None = 0.03
    # Entropy bonus per head, averaged over all rows (a forced head has entropy 0 there):
    # every decision weighs the same, whichever heads it used. Small, because the teacher
    # term below keeps the early policy from collapsing.
    entropy_coef: dict[str, float] = field(default_factory=lambda: _per_head(0.003))
    # Normalised entropy (entropy / log(#choices), over the rows where the head had a
    # choice) below which a hinge penalty pushes back. Kept next to the teacher term, which
    # is annealed: the floor still guards against the collapse onto WAIT the reference
    # implementation suffered once the teacher's pull is weak.
    entropy_floor: dict[str, float] = field(default_factory=lambda: _per_head(0.1))
    entropy_floor_coef: float = 0.5
    # Weight of mean -log pi(teacher action | s) over rows with a teacher action (the KL from
    # a deterministic teacher, up to a constant): PPO's first noisy updates cannot undo the
    # cloned warm start. Annealed linearly to teacher_coef_final over teacher_anneal_updates
    # updates (teacher_coef_at), so the policy can depart from the teacher where that pays;
    # a small final pull keeps it from drifting on states the rewards say little about.
    teacher_coef: float = 0.5
    teacher_coef_final: float = 0.05
    teacher_anneal_updates: int = 100
    # health_warnings: look at this many recent updates for these symptoms.
    health_window: int = 5
    health_entropy_min: float = 0.05
    health_explained_variance_min: float = 0.05
    health_wait_max: float = 0.99

    def __post_init__(self):
        if self.advantages not in ADVANTAGES:
            raise ValueError(f"advantages must be one of {ADVANTAGES}, got {self.advantages!r}")


def teacher_coef_at(cfg: PPOConfig, update_index: int) -> float:
    """The teacher term's weight in update `update_index` (0 for the first update)."""
    if cfg.teacher_anneal_updates <= 0:
        return cfg.teacher_coef_final
    done = min(update_index / cfg.teacher_anneal_updates, 1.0)
    return cfg.teacher_coef + done * (cfg.teacher_coef_final - cfg.teacher_coef)


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


def loo_advantages(rewards: Tensor, values: Tensor, groups: Tensor, gamma: float) -> tuple[Tensor, Tensor]:
    """Leave-one-out advantages and returns for [T, E] rollouts of whole episodes, all
    starting at step 0 and ending after step T-1; groups [E] holds each env's group id.

    G is the discounted return-to-go. advantage[t, e] = G[t, e] minus the mean G[t, e']
    over the other envs e' of e's group; an env alone in its group gets G - V instead.
    """
    returns = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[0])
    for t in reversed(range(rewards.shape[0])):
        running = rewards[t] + gamma * running
        returns[t] = running
    others = (groups.unsqueeze(0) == groups.unsqueeze(1)) & ~torch.eye(len(groups), dtype=torch.bool)
    count = others.sum(1)
    others_mean = returns @ others.to(returns.dtype) / count.clamp(min=1)
    return returns - torch.where(count > 0, others_mean, values), returns


@dataclass
class Minibatch:
    """Rows of a RolloutBuffer, observations padded into one batch."""

    observations: ObservationBatch
    actions: Tensor  # [B, 4]
    masks: ActionMasks  # as stored when the actions were chosen
    old_log_prob: Tensor  # [B]
    advantages: Tensor  # [B], as computed (ppo_update normalises them over the whole rollout)
    returns: Tensor  # [B]
    teacher_actions: Tensor  # [B, 4]; rows without a teacher hold WAIT
    has_teacher: Tensor  # [B] bool


class RolloutBuffer:
    """Transitions of E environments over T steps. Observations are kept per environment
    (slot counts differ between hosts) and re-batched, padded, per minibatch."""

    def __init__(self, num_envs: int):
        self.num_envs = num_envs
        self.groups: Tensor | None = None  # [E], fixed by the first add that names them
        self.observations: list[Observation] = []  # step-major: index t * E + e
        self.slot_masks: list[Tensor] = []  # [N_e] each, trimmed to the observation's slots
        self.actions: list[Tensor] = []  # [E, 4] per step
        self.op_masks, self.blueprint_masks, self.blend_masks = [], [], []  # [E, width] per step
        self.log_probs: list[Tensor] = []
        self.values: list[Tensor] = []
        self.rewards, self.dones = [], []  # [E] per step
        self.teacher_actions: list[Tensor] = []  # [E, 4] per step, WAIT where there is no teacher
        self.has_teacher: list[Tensor] = []  # [E] bool per step
        self.advantages = self.returns = None  # [T * E] each, once compute_returns ran
        self.flat: dict[str, Tensor] = {}  # the per-step lists above, concatenated by compute_returns

    def __len__(self) -> int:
        return len(self.observations)

    def add(
        self,
        observations: Sequence[Observation],
        sample: ActionSample,
        rewards: Sequence[float],
        dones: Sequence[bool],
        teacher_actions: Tensor | None = None,
        groups: Sequence[int] | None = None,
    ) -> None:
        """One step of every environment. `teacher_actions` [E, 4]: the teacher's choice
        at each observation (legal under `masks_for` them), or None for no teacher.
        `groups`: one id per environment, the same at every step; environments that share
        a training seed and host share an id and are each other's leave-one-out baseline
        (never given: every environment alone, its baseline the critic)."""
        if not len(observations) == len(rewards) == len(dones) == self.num_envs:
            raise ValueError(f"expected {self.num_envs} observations, rewards and dones")
        if groups is not None:
            groups = torch.as_tensor(list(groups), dtype=torch.long)
            if groups.shape != (self.num_envs,) or (self.groups is not None and not torch.equal(groups, self.groups)):
                raise ValueError(f"groups must name all {self.num_envs} environments, the same way at every step")
            self.groups = groups
        taught = teacher_actions is not None
        if taught:
            teacher_actions = torch.as_tensor(teacher_actions, dtype=torch.long).cpu()
            check_legal(masks_for(batch_observations(list(observations)), teacher_actions), teacher_actions, "teacher")
        self.teacher_actions.append(teacher_actions if taught else torch.zeros(self.num_envs, len(HEADS), dtype=torch.long))
        self.has_teacher.append(torch.full((self.num_envs,), taught))
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

    def compute_returns(self, cfg: PPOConfig, last_value: Tensor | None = None) -> None:
        """Advantages and returns by cfg.advantages. "gae" bootstraps from last_value [E],
        V of the observations after the last step (None: zeros, every episode ended);
        "loo" raises unless every episode spans the whole buffer."""
        rewards, values, dones = torch.stack(self.rewards), torch.stack(self.values).float(), torch.stack(self.dones)
        if cfg.advantages == "loo":
            if not (bool(dones[-1].all()) and not bool(dones[:-1].any())):
                raise ValueError("leave-one-out advantages need whole episodes, done at the last step only: use advantages='gae'")
            groups = torch.arange(self.num_envs) if self.groups is None else self.groups
            advantages, returns = loo_advantages(rewards, values, groups, cfg.gamma)
        else:
            last = torch.zeros(self.num_envs) if last_value is None else last_value.detach().float().cpu()
            advantages, returns = compute_gae(rewards, values, dones, last, cfg.gamma, cfg.gae_lambda)
        self.advantages, self.returns = advantages.flatten(), returns.flatten()
        names = ("actions", "op_masks", "blueprint_masks", "blend_masks", "log_probs", "values", "teacher_actions", "has_teacher")
        self.flat = {name: torch.cat(getattr(self, name)) for name in names}

    def minibatch(self, index: Tensor) -> Minibatch:
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
        return Minibatch(
            batch,
            self.flat["actions"][index],
            masks,
            self.flat["log_probs"][index],
            self.advantages[index],
            self.returns[index],
            self.flat["teacher_actions"][index],
            self.flat["has_teacher"][index],
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


def _entropy_terms(entropy: dict[str, Tensor], masks: ActionMasks, cfg: PPOConfig, stats: dict) -> tuple[Tensor, Tensor]:
    """The entropy bonus (mean over all rows) and the floor penalty (on the normalised
    entropy over the rows where a head had a choice); logs the latter per head."""
    bonus = floor_penalty = 0.0
    for head in HEADS:
        bonus = bonus + cfg.entropy_coef[head] * entropy[head].mean()
        choices = masks[head].sum(-1).to(entropy[head].device)
        free = choices > 1
        if not bool(free.any()):
            continue
        head_entropy = entropy[head][free]
        normalised = (head_entropy / choices[free].float().log()).mean()
        floor_penalty = floor_penalty + torch.relu(cfg.entropy_floor[head] - normalised)
        stats[f"entropy/{head}"].append(float(head_entropy.detach().mean()))
        stats[f"entropy_norm/{head}"].append(float(normalised.detach()))
    return bonus, floor_penalty


def ppo_update(
    policy: TamiyoPolicy, optimizer: torch.optim.Optimizer, buffer: RolloutBuffer, cfg: PPOConfig, update_index: int = 0
) -> dict:
    """Clipped-surrogate PPO epochs over the buffer; returns the update's metrics.
    `update_index` counts the updates before this one and sets the teacher term's
    weight (teacher_coef_at)."""
    if buffer.advantages is None:
        raise RuntimeError("call buffer.compute_returns(cfg) before ppo_update")
    n = len(buffer)
    teacher_coef = teacher_coef_at(cfg, update_index)
    shift, scale = 0.0, 1.0
    if cfg.normalize_advantages and n > 1:
        shift, scale = buffer.advantages.mean(), buffer.advantages.std() + 1e-8
    names = ["policy_loss", "value_loss", "teacher_loss", "approx_kl", "clip_fraction"]
    names += [f"entropy/{h}" for h in HEADS] + [f"entropy_norm/{h}" for h in HEADS]
    stats: dict[str, list[float]] = {name: [] for name in names}
    kl_early_stop = False
    for _ in range(cfg.update_epochs):
        order = torch.randperm(n)
        for start in range(0, n, cfg.minibatch_size):
            mb = buffer.minibatch(order[start : start + cfg.minibatch_size])
            batch = mb.observations.to(policy.device)
            log_prob, entropy = policy.evaluate_actor(batch, mb.actions, mb.masks)
            value = policy.value(batch)
            advantages = ((mb.advantages - shift) / scale).to(value.device)
            log_ratio = log_prob - mb.old_log_prob.to(value.device)
            ratio = log_ratio.exp()
            with torch.no_grad():
                # The k3 estimator of KL(old || new): unbiased and always >= 0.
                approx_kl = float(((ratio - 1) - log_ratio).mean())
            if cfg.target_kl is not None and approx_kl > cfg.target_kl:
                kl_early_stop = True
                break

            policy_loss = torch.max(-advantages * ratio, -advantages * ratio.clamp(1 - cfg.clip_coef, 1 + cfg.clip_coef)).mean()
            value_loss = 0.5 * (value - mb.returns.to(value.device)).pow(2).mean()
            entropy_bonus, floor_penalty = _entropy_terms(entropy, mb.masks, cfg, stats)
            loss = policy_loss - entropy_bonus + cfg.value_coef * value_loss + cfg.entropy_floor_coef * floor_penalty
            if bool(mb.has_teacher.any()):
                teacher_log_prob, _ = policy.evaluate_actor(batch, mb.teacher_actions, masks_for(mb.observations, mb.teacher_actions))
                teacher_loss = -teacher_log_prob[mb.has_teacher.to(value.device)].mean()
                loss = loss + teacher_coef * teacher_loss
                stats["teacher_loss"].append(float(teacher_loss.detach()))

            optimizer.zero_grad()
            loss.backward()
            # Clipped apart: one joint norm would let the critic's large early gradients
            # shrink the actor's step, which the separate critic exists to prevent.
            nn.utils.clip_grad_norm_(policy.actor_parameters(), cfg.max_grad_norm)
            nn.utils.clip_grad_norm_(policy.critic.parameters(), cfg.max_grad_norm)
            optimizer.step()

            stats["policy_loss"].append(float(policy_loss.detach()))
            stats["value_loss"].append(float(value_loss.detach()))
            stats["approx_kl"].append(approx_kl)
            stats["clip_fraction"].append(float(((ratio.detach() - 1).abs() > cfg.clip_coef).float().mean()))
        if kl_early_stop:
            break

    actions = buffer.flat["actions"]
    germinate = actions[:, 0] == Op.GERMINATE
    taught = buffer.flat["has_teacher"]
    agrees = (actions[taught] == buffer.flat["teacher_actions"][taught]).all(-1)
    metrics = {name: mean_or_nan(values) for name, values in stats.items()}
    metrics.update(
        minibatches=len(stats["policy_loss"]),
        kl_early_stop=kl_early_stop,
        explained_variance=explained_variance(buffer.flat["values"], buffer.returns),
        teacher_coef=teacher_coef,
        teacher_agreement=float(agrees.float().mean()) if len(agrees) else math.nan,
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
