"""Module modes switched for a block of code and always restored."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn


@contextmanager
def train_mode(module: nn.Module, training: bool) -> Iterator[nn.Module]:
    """`module.train(training)` inside the block; on exit, even by an exception, every
    submodule is back in the mode it had (a frozen BatchNorm inside a training model stays
    frozen)."""
    modes = [(m, m.training) for m in module.modules()]
    module.train(training)
    try:
        yield module
    finally:
        # The module's own train() first: it may keep flags outside its submodules in step
        # (an instrumented model's host); then each submodule's own mode.
        module.train(modes[0][1])
        for m, was in modes:
            m.training = was


def eval_mode(module: nn.Module):
    """`with eval_mode(model): ...` runs the block in eval mode and restores the modes after."""
    return train_mode(module, False)
