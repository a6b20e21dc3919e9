"""Seed learning rates: "follow" trains a seed at the host's rate of the moment; "peak"
starts it at the host's peak rate and decays it in step with the host from there."""

from __future__ import annotations

import pytest
import torch

from esper.simic.schedules import SeedGroups


def schedule_at(factors: list[float], rule: str) -> list[float]:
    """A host group at peak rate 0.1 whose schedule multiplies it by factors[t] at step t;
    a seed group joins after the second step. Returns the seed's rate at each later step."""
    host = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([host], lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: factors[t])
    groups = SeedGroups(opt, sched, rule=rule)
    rates = []
    for t in range(len(factors) - 1):
        if t == 2:
            opt.add_param_group({"params": [torch.nn.Parameter(torch.zeros(1))], "esper_slot": "s"})
        groups.sync()
        if t >= 2:
            rates.append(opt.param_groups[1]["lr"])
        opt.step()
        sched.step()
    return rates


FACTORS = [1.0, 0.5, 0.25, 0.2, 0.1, 0.05]


def test_follow_trains_a_late_seed_at_the_hosts_rate_of_the_moment():
    assert schedule_at(FACTORS, "follow") == pytest.approx([0.025, 0.02, 0.01])


def test_peak_starts_a_late_seed_at_the_hosts_peak_and_decays_with_the_host():
    # joined at factor 0.25: four times the host's rate from then on
    assert schedule_at(FACTORS, "peak") == pytest.approx([0.1, 0.08, 0.04])


def test_peak_never_slows_a_seed_below_the_host_during_a_warm_up():
    assert schedule_at([0.1, 0.5, 2.0, 1.0, 1.0, 1.0], "peak") == pytest.approx([0.2, 0.1, 0.1])


def test_an_unknown_rule_is_refused():
    with pytest.raises(ValueError, match="follow, peak"):
        SeedGroups(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1), rule="fast")
