"""Seed parameter groups inside a user's optimizer and learning-rate schedulers.

`plane.attach_optimizer` adds a parameter group when a seed germinates and removes it
when the seed is culled. torch's schedulers keep per-group lists (`base_lrs`,
`lr_lambdas`, `max_lrs`...) sized when they were built and zip them strictly with the
optimizer's groups, so the first `scheduler.step()` after a germination would raise, and
some schedulers (OneCycleLR) also read their own keys from every group. `SeedGroups`
keeps both in step, and sets every seed group's learning rate to `scale` times the
optimizer's first group's current one, whatever the schedule did to it: seeds follow the
schedule of the host.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch

# Scheduler attributes that hold one entry per parameter group (torch.optim.lr_scheduler).
PER_GROUP = ("base_lrs", "_last_lr", "lr_lambdas", "max_lrs", "base_momentums", "max_momentums", "min_lrs")


def _unwrapped(schedulers) -> Iterator:
    """Every scheduler object behind `schedulers`: wrappers (accelerate's) expose theirs as
    `.scheduler`; SequentialLR and ChainedScheduler hold theirs in `._schedulers`."""
    if schedulers is None:
        return
    if not isinstance(schedulers, Iterable):
        schedulers = [schedulers]
    for s in schedulers:
        s = getattr(s, "scheduler", s)
        yield s
        yield from _unwrapped(getattr(s, "_schedulers", None))


class SeedGroups:
    def __init__(self, optimizer: torch.optim.Optimizer, schedulers=None, scale: float = 1.0):
        if scale <= 0:
            raise ValueError(f"seed_lr_scale must be positive, got {scale}")
        self.optimizer = optimizer
        self.schedulers = list(_unwrapped(schedulers))
        self.scale = scale
        # The groups the schedulers' lists were sized for; held, so that a removed group's
        # id cannot be reused by a new one.
        self._groups = list(optimizer.param_groups)

    def sync(self) -> None:
        """Call whenever groups may have come or gone, before the optimizer steps."""
        groups = self.optimizer.param_groups
        if len(groups) != len(self._groups) or any(a is not b for a, b in zip(groups, self._groups)):
            self._resize(groups)
        lead = groups[0]
        for group in groups:
            if "esper_slot" in group:
                for key, value in lead.items():
                    if key != "params":
                        group.setdefault(key, value)
                group["lr"] = lead["lr"] * self.scale

    def _resize(self, groups: list[dict]) -> None:
        """Old groups keep their entries; a new group takes the first group's."""
        old = {id(g): i for i, g in enumerate(self._groups)}
        for scheduler in self.schedulers:
            for name in PER_GROUP:
                values = getattr(scheduler, name, None)
                if isinstance(values, list) and len(values) == len(self._groups):
                    setattr(scheduler, name, [values[old[id(g)]] if id(g) in old else values[0] for g in groups])
        self._groups = list(groups)
