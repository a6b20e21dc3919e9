"""Warm starts: TamiyoPolicy fitted to a teacher's (e.g. the heuristic's) episodes.

behaviour_clone  the policy heads: starting PPO from a policy that already germinates,
                 advances and fossilizes sensibly avoids the early phase where a random
                 policy churns seeds and learns that doing nothing is safest. The loss is
                 the teacher action's negative log-prob through the same autoregressive
                 masks PPO uses, minus a small entropy bonus so that PPO still has
                 something to explore with.
fit_value        the value head only, regressed on the teacher's Monte Carlo returns: a
                 critic that explains the return from the start, so that PPO's first
                 advantages are not noise.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from esper.leyline import Observation, batch_observations
from esper.tamiyo.actions import HEADS, Action, masks_for
from esper.tamiyo.policy import TamiyoPolicy
from esper.tamiyo.ppo import explained_variance


@dataclass
class ImitationConfig:
    epochs: int = 20
    learning_rate: float = 1e-3
    batch_size: int = 128
    entropy_coef: float = 0.01
    seed: int = 0


def behaviour_clone(
    policy: TamiyoPolicy,
    observations: Sequence[Observation],
    actions: Sequence[Action],
    cfg: ImitationConfig | None = None,
) -> list[float]:
    """Fit the policy heads to (observation, teacher action) pairs; returns the mean
    loss of each epoch. Raises if a teacher action is illegal under the masks."""
    cfg = cfg or ImitationConfig()
    if len(observations) != len(actions) or not observations:
        raise ValueError("need the same, non-zero number of observations and actions")
    targets = torch.tensor([tuple(a) for a in actions], dtype=torch.long)
    everything = batch_observations(list(observations))
    masks = masks_for(everything, targets)
    for i, head in enumerate(HEADS):
        legal = masks[head].gather(-1, targets[:, i : i + 1]).squeeze(-1)
        if not bool(legal.all()):
            raise ValueError(f"teacher {head} choices are illegal in rows {(~legal).nonzero().flatten().tolist()}")

    def loss(batch, index):
        action = targets[index]
        log_prob, entropy, _ = policy.evaluate(batch, action, masks_for(batch, action))
        return -log_prob.mean() - cfg.entropy_coef * sum(e.mean() for e in entropy.values())

    return _fit(list(policy.parameters()), observations, loss, cfg.epochs, cfg)


def fit_value(policy: TamiyoPolicy, observations, actions, returns, epochs: int, cfg: ImitationConfig) -> tuple[list[float], float]:
    """Regress the value head (only: the cloned policy heads stay as they are) on returns.
    Returns the loss per epoch and the explained variance afterwards."""
    target = torch.tensor(returns, dtype=torch.float32)
    chosen = torch.tensor([tuple(a) for a in actions], dtype=torch.long)

    def loss(batch, index):
        _, _, value = policy.evaluate(batch, chosen[index], masks_for(batch, chosen[index]))
        return 0.5 * (value - target[index].to(value.device)).pow(2).mean()

    losses = _fit(list(policy.value_head.parameters()), observations, loss, epochs, cfg)
    policy.zero_grad(set_to_none=True)
    with torch.no_grad():
        batch = batch_observations(list(observations))
        _, _, value = policy.evaluate(batch, chosen, masks_for(batch, chosen))
    return losses, explained_variance(value.cpu(), target)


def _fit(params, observations: Sequence[Observation], loss_of, epochs: int, cfg: ImitationConfig) -> list[float]:
    """Adam on `params` over minibatches of the observations in a seeded order; `loss_of`
    maps (batch, row indices) to a loss. Returns the mean loss of each epoch."""
    optimizer = torch.optim.Adam(params, lr=cfg.learning_rate)
    generator = torch.Generator().manual_seed(cfg.seed)
    losses = []
    for _ in range(epochs):
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
    return losses


def agreement(policy: TamiyoPolicy, observations: Sequence[Observation], actions: Sequence[Action]) -> float:
    """Fraction of observations where the policy's greedy action equals the teacher's."""
    sample = policy.act(batch_observations(list(observations)), deterministic=True)
    targets = torch.tensor([tuple(a) for a in actions], dtype=torch.long)
    return float((sample.actions.cpu() == targets).all(-1).float().mean())
