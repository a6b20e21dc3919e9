"""Behaviour cloning: warm-start TamiyoPolicy from a teacher's (e.g. the heuristic's) decisions.

Starting PPO from a policy that already germinates, advances and fossilizes sensibly
avoids the early phase where a random policy churns seeds and learns that doing
nothing is safest. The loss is the teacher action's negative log-prob through the same
autoregressive masks PPO uses, minus a small entropy bonus so that PPO still has
something to explore with.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from esper.leyline import Observation, batch_observations
from esper.tamiyo.actions import HEADS, Action, masks_for
from esper.tamiyo.policy import TamiyoPolicy


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

    optimizer = torch.optim.Adam(policy.parameters(), lr=cfg.learning_rate)
    generator = torch.Generator().manual_seed(cfg.seed)
    losses = []
    for _ in range(cfg.epochs):
        order = torch.randperm(len(targets), generator=generator)
        total = 0.0
        for start in range(0, len(targets), cfg.batch_size):
            index = order[start : start + cfg.batch_size]
            batch = batch_observations([observations[i] for i in index.tolist()])
            action = targets[index]
            log_prob, entropy, _ = policy.evaluate(batch, action, masks_for(batch, action))
            loss = -log_prob.mean() - cfg.entropy_coef * sum(e.mean() for e in entropy.values())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(index)
        losses.append(total / len(targets))
    return losses


def agreement(policy: TamiyoPolicy, observations: Sequence[Observation], actions: Sequence[Action]) -> float:
    """Fraction of observations where the policy's greedy action equals the teacher's."""
    sample = policy.act(batch_observations(list(observations)), deterministic=True)
    targets = torch.tensor([tuple(a) for a in actions], dtype=torch.long)
    return float((sample.actions.cpu() == targets).all(-1).float().mean())
