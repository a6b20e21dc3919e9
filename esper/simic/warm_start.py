"""Warm start beyond behaviour cloning: the critic, fitted to the teacher's returns.

Behaviour cloning (tamiyo.behaviour_clone) trains the policy heads only, so PPO would
start with a critic that predicts nothing, and its first advantages would be noise.
Fitting the value head to the Monte Carlo returns of the same heuristic episodes gives
PPO a critic that already explains most of the return from the start.
"""

from __future__ import annotations

import torch

from esper.leyline import batch_observations
from esper.tamiyo import ImitationConfig, TamiyoPolicy, explained_variance, masks_for


def discounted_returns(rollout, gamma: float) -> list[float]:
    """Monte Carlo returns of every decision, in the rollout's step-major order (t * K + e)."""
    rewards = torch.tensor([d.rewards for d in rollout.decisions])  # [T, K]
    dones = torch.tensor([d.dones for d in rollout.decisions], dtype=torch.float32)
    out = torch.zeros_like(rewards)
    running = torch.zeros(rewards.shape[1])
    for t in reversed(range(rewards.shape[0])):
        running = rewards[t] + gamma * running * (1 - dones[t])
        out[t] = running
    return out.flatten().tolist()


def fit_value(policy: TamiyoPolicy, observations, actions, returns, epochs: int, cfg: ImitationConfig) -> tuple[list[float], float]:
    """Regress the value head (only: the cloned policy heads stay as they are) on returns.
    Returns the loss per epoch and the explained variance afterwards."""
    target = torch.tensor(returns, dtype=torch.float32)
    chosen = torch.tensor([tuple(a) for a in actions], dtype=torch.long)
    optimizer = torch.optim.Adam(policy.value_head.parameters(), lr=cfg.learning_rate)
    generator = torch.Generator().manual_seed(cfg.seed)
    losses = []
    for _ in range(epochs):
        order = torch.randperm(len(target), generator=generator)
        total = 0.0
        for start in range(0, len(target), cfg.batch_size):
            index = order[start : start + cfg.batch_size]
            batch = batch_observations([observations[i] for i in index.tolist()])
            _, _, value = policy.evaluate(batch, chosen[index], masks_for(batch, chosen[index]))
            loss = 0.5 * (value - target[index].to(value.device)).pow(2).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(index)
        losses.append(total / len(target))
    policy.zero_grad(set_to_none=True)
    with torch.no_grad():
        batch = batch_observations(list(observations))
        _, _, value = policy.evaluate(batch, chosen, masks_for(batch, chosen))
    return losses, explained_variance(value.cpu(), target)
