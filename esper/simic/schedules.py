"""Seed parameter groups inside an optimizer and its learning-rate schedulers: a user's
(the Gardener's) or an episode's (HostTrainer's), by the same rule.

`plane.attach_optimizer` adds a parameter group when a seed germinates and removes it
when the seed is culled. torch's schedulers keep per-group lists (`base_lrs`,
`lr_lambdas`, `max_lrs`...) sized when they were built and zip them strictly with the
optimizer's groups, so the first `scheduler.step()` after a germination would raise, and
some schedulers (OneCycleLR) also read their own keys from every group. `SeedGroups`
keeps both in step, and sets every seed group's learning rate by one rule (`seed_lr`),
whatever the schedule did to the seed group itself:

    "follow"  seed lr = scale x lead lr
    "peak"    seed lr = scale x lead lr / f0,   f0 = min(1, lead lr / lead initial lr)
                                                when the seed joined

lead: the optimizer's first group (the host's), as the schedule set it for the coming
step. With "follow" a seed trains at the host's rate of the moment, so one germinated late
in a decaying schedule learns slowly and falls short of the same module trained from the
start. With "peak" it starts at the host's peak rate and decays from there in step with
the host (keep the peak, decay faster): a seed that joins at a fifth of the peak rate
trains at five times the host's rate to the end.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch

# Scheduler attributes that hold one entry per parameter group (torch.optim.lr_scheduler).
PER_GROUP = ("base_lrs", "_last_lr", "lr_lambdas", "max_lrs", "base_momentums", "max_momentums", "min_lrs")
SEED_LR_RULES = ("follow", "peak")


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
    """The seed groups of `optimizer`, and the per-group lists of `schedulers`, kept in
    step with each other; see the module docstring."""

    def __init__(self, optimizer: torch.optim.Optimizer, schedulers=None, scale: float = 1.0, rule: str = "follow"):
        if scale <= 0:
            raise ValueError(f"seed_lr_scale must be positive, got {scale}")
        if rule not in SEED_LR_RULES:
            raise ValueError(f"seed_lr_rule must be one of {', '.join(SEED_LR_RULES)}, got {rule!r}")
        self.optimizer = optimizer
        self.schedulers = list(_unwrapped(schedulers))
        self.scale = scale
        self.rule = rule
        # The groups the schedulers' lists were sized for; held, so that a removed group's
        # id cannot be reused by a new one.
        self._groups = list(optimizer.param_groups)

    def sync(self) -> None:
        """Call before every optimizer step, after anything that may add or remove groups
        (an edit, the NaN guard)."""
        groups = self.optimizer.param_groups
        if len(groups) != len(self._groups) or any(a is not b for a, b in zip(groups, self._groups)):
            self._resize(groups)
        lead = groups[0]
        for group in groups:
            if "esper_slot" in group:
                for key, value in lead.items():
                    if key != "params":
                        group.setdefault(key, value)
                group["lr"] = self.seed_lr(group, lead)

    def seed_lr(self, group: dict, lead: dict) -> float:
        """The learning rate of seed group `group` for the coming step: the one place the
        rule lives. The group keeps its boost (1 / f0, or 1) from the step it joined at."""
        if "esper_lr_boost" not in group:
            peak = lead.get("initial_lr", lead["lr"])  # torch's schedulers keep the group's starting rate there
            group["esper_lr_boost"] = max(1.0, peak / lead["lr"]) if self.rule == "peak" and lead["lr"] > 0 else 1.0
        return lead["lr"] * self.scale * group["esper_lr_boost"]

    def _resize(self, groups: list[dict]) -> None:
        """Old groups keep their entries; a new group takes the first group's."""
        old = {id(g): i for i, g in enumerate(self._groups)}
        for scheduler in self.schedulers:
            for name in PER_GROUP:
                values = getattr(scheduler, name, None)
                if isinstance(values, list) and len(values) == len(self._groups):
                    setattr(scheduler, name, [values[old[id(g)]] if id(g) in old else values[0] for g in groups])
        self._groups = list(groups)
