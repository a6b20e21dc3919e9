"""The teacher's returns for the critic's warm start (`tamiyo.fit_value`)."""

from __future__ import annotations

import torch


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
