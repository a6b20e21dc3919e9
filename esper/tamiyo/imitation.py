"""Warm starts: TamiyoPolicy fitted to a teacher's (e.g. the heuristic's) episodes.

behaviour_clone  the actor: starting PPO from a policy that already germinates, advances
                 and fossilizes sensibly avoids the early phase where a random policy
                 churns seeds and learns that doing nothing is safest. The loss is the
                 teacher action's negative log-prob through the same autoregressive masks
                 PPO uses; it trains until the greedy policy agrees with the teacher on
                 cfg.target_agreement of the pairs, so the warm start is the teacher and
                 not an approximation of it that PPO must first repair.
fit_value        the critic only, regressed on the teacher's Monte Carlo returns: a critic
                 that explains the return from the start, so that PPO's first advantages
                 are not noise.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from esper.leyline import Observation, batch_observations
from esper.tamiyo.actions import Action, check_legal, masks_for
from esper.tamiyo.policy import TamiyoPolicy
from esper.tamiyo.ppo import explained_variance


@dataclass
class ImitationConfig:
    # Cloning stops once the greedy policy agrees with the teacher on this fraction of the
    # pairs: close enough that PPO starts from the teacher's behaviour.
    target_agreement: float = 0.95
    max_epochs: int = 300  # the most it trains when the target is not reached
    check_every: int = 5  # epochs between agreement checks (each is a pass over every pair)
    learning_rate: float = 1e-3
    batch_size: int = 128
    # Small: the clone should commit to the teacher's choices; PPO's teacher term and
    # entropy floor keep exploration honest later.
    entropy_coef: float = 0.001
    seed: int = 0


@dataclass
class CloneResult:
    losses: list[float]  # mean loss of each epoch trained
    epochs: int
    agreement: float  # greedy agreement with the teacher at the end


def behaviour_clone(
    policy: TamiyoPolicy,
    observations: Sequence[Observation],
    actions: Sequence[Action],
    cfg: ImitationConfig | None = None,
) -> CloneResult:
    """Fit the actor to (observation, teacher action) pairs until cfg.target_agreement
    or cfg.max_epochs. Raises if a teacher action is illegal under the masks."""
    cfg = cfg or ImitationConfig()
    if len(observations) != len(actions) or not observations:
        raise ValueError("need the same, non-zero number of observations and actions")
    targets = torch.tensor([tuple(a) for a in actions], dtype=torch.long)
    check_legal(masks_for(batch_observations(list(observations)), targets), targets, "teacher")

    def loss(batch, index):
        action = targets[index]
        log_prob, entropy = policy.evaluate_actor(batch, action, masks_for(batch, action))
        return -log_prob.mean() - cfg.entropy_coef * sum(e.mean() for e in entropy.values())

    def reached() -> bool:
        return agreement(policy, observations, actions) >= cfg.target_agreement

    losses = _fit(policy.actor_parameters(), observations, loss, cfg.max_epochs, cfg, stop=reached)
    return CloneResult(losses, len(losses), agreement(policy, observations, actions))


def fit_value(
    policy: TamiyoPolicy, observations: Sequence[Observation], returns, epochs: int, cfg: ImitationConfig
) -> tuple[list[float], float]:
    """Regress the critic (only: the cloned actor stays as it is) on returns. Returns the
    loss per epoch and the explained variance afterwards."""
    target = torch.tensor(returns, dtype=torch.float32)

    def loss(batch, index):
        value = policy.value(batch)
        return 0.5 * (value - target[index].to(value.device)).pow(2).mean()

    losses = _fit(list(policy.critic.parameters()), observations, loss, epochs, cfg)
    with torch.no_grad():
        value = policy.value(batch_observations(list(observations)))
    return losses, explained_variance(value.cpu(), target)


def _fit(
    params,
    observations: Sequence[Observation],
    loss_of,
    max_epochs: int,
    cfg: ImitationConfig,
    stop: Callable[[], bool] = lambda: False,
) -> list[float]:
    """Adam on `params` over minibatches of the observations in a seeded order; `loss_of`
    maps (batch, row indices) to a loss. Every cfg.check_every epochs, ends early if
    `stop()`. Returns the mean loss of each epoch."""
    optimizer = torch.optim.Adam(params, lr=cfg.learning_rate)
    generator = torch.Generator().manual_seed(cfg.seed)
    losses = []
    for epoch in range(1, max_epochs + 1):
        order = torch.randperm(len(observations), generator=generator)
        total = 0.0
        for start in range(0, len(observations), cfg.batch_size):
            index = order[start : start + cfg.batch_size]
            loss = loss_of(batch_observations([observations[i] for i in index.tolist()]), index)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(index)
        losses.append(total / len(observations))
        if epoch % cfg.check_every == 0 and stop():
            break
    optimizer.zero_grad(set_to_none=True)  # leave no stale gradients for the next optimizer to see
    return losses


def agreement(policy: TamiyoPolicy, observations: Sequence[Observation], actions: Sequence[Action]) -> float:
    """Fraction of observations where the policy's greedy action equals the teacher's."""
    sample = policy.act(batch_observations(list(observations)), deterministic=True)
    targets = torch.tensor([tuple(a) for a in actions], dtype=torch.long)
    return float((sample.actions.cpu() == targets).all(-1).float().mean())
