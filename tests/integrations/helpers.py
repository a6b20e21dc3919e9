"""Policies and a small instrumented model for the integration tests."""

from __future__ import annotations

import torch

import esper
from esper.leyline import Edit, Op
from tests.simic.toys import TinyCNN, toy_data


class Scripted:
    """Plays a list of edits, one per decision (WAIT when it runs out), and keeps every
    observation it was shown."""

    def __init__(self, edits=()):
        self.edits = list(edits)
        self.seen = []

    def decide(self, observations):
        self.seen += observations
        return [self.edits.pop(0) if self.edits else Edit(Op.WAIT) for _ in observations]


def grow(slot: str, blueprint: str = "depthwise", steps: int = 1) -> list[Edit]:
    """Germinate, then advance to TRAINING and on to BLENDING, one decision each."""
    return [Edit(Op.GERMINATE, slot, blueprint, "linear", steps), Edit(Op.ADVANCE, slot), Edit(Op.ADVANCE, slot)]


def tiny():
    """An instrumented TinyCNN (slots block1.0, block1, pool, block2), its SGD optimizer and toy data."""
    torch.manual_seed(0)
    data = toy_data()
    mm = esper.instrument(TinyCNN(), (data.train.x[:2],))
    return mm, torch.optim.SGD(mm.parameters(), lr=0.1), data


def count_calls(monkeypatch, cls, name: str) -> list:
    """Record every call of `cls.name` (still calling it) in the returned list."""
    calls, original = [], getattr(cls, name)
    monkeypatch.setattr(cls, name, lambda self, *a, **k: calls.append(name) or original(self, *a, **k))
    return calls


def against_chance(accuracies, classes: int) -> list[float]:
    """Accuracies as the features read them: 0 for guessing among `classes`, 1 for perfect."""
    return [(a - 1 / classes) / (1 - 1 / classes) for a in accuracies]
