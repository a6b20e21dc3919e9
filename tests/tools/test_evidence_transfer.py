"""Tamiyo on unseen hosts is judged from the paired numbers: the pooled interval is the t interval
of every (host, seed) difference, and each target reads met, not met or not measured."""

from __future__ import annotations

import math

import pytest

from tests.tools.test_evidence import _load, _run, doc

transfer = _load("evidence_transfer")

SEEDS = range(3)
# Two unseen hosts (one whose name has `-deep` in it, which must not pair it with host-deep):
# host alone, the heuristic a fixed step above it, and Tamiyo these leads over the heuristic.
HOSTS = {"alpha-w8-b3": (0.50, 0.010, [0.010, 0.012, 0.008]), "beta-deep-w8": (0.40, 0.005, [0.006, 0.004, 0.010])}


def _runs(leads=None, home_lead=(0.002, -0.001, 0.002), drop=()) -> dict:
    """Unseen hosts as in HOSTS (Tamiyo's leads over the heuristic replaced by `leads[name]`),
    the benchmark host and the deeper host; arms in `drop` are left out."""
    runs = {}
    for name, (base, step, lead) in HOSTS.items():
        lead = (leads or {}).get(name, lead)
        for s in SEEDS:
            host = base + 0.01 * s
            runs.update([_run(f"host@{name}", s, host), _run(f"heuristic@{name}", s, host + step, 30)])
            runs.update([_run(f"tamiyo@{name}", s, host + step + lead[s], 20)])
    for s in SEEDS:
        runs.update([_run("host", s, 0.60 + 0.01 * s), _run("heuristic", s, 0.62 + 0.01 * s, 40)])
        runs.update([_run("tamiyo", s, 0.62 + 0.01 * s + home_lead[s], 40)])
        runs.update([_run("heuristic-deep", s, 0.70, 10), _run("tamiyo-deep", s, 0.71, 10)])
    for (arm, s), r in runs.items():
        if "@" in arm:
            r["host_params"] = 1234
        if arm.startswith("tamiyo@"):
            r["fossils"] = {"block2": "norm"} if s else {}
    return {k: r for k, r in runs.items() if k[0] not in drop}


def _targets(runs: dict) -> list[tuple[bool | None, str]]:
    arms, _ = doc.summarize(runs)
    return [(ok, detail) for _, ok, detail in transfer.targets(arms, transfer.unseen_hosts(arms))]


def test_arms_on_a_zoo_host_are_paired_with_that_host_alone():
    assert doc.reference_of("tamiyo@beta-deep-w8") == "host@beta-deep-w8"
    assert doc.reference_of("heuristic@alpha-w8-b3") == "host@alpha-w8-b3"
    assert doc.reference_of("tamiyo-deep") == "host-deep" and doc.reference_of("tamiyo") == "host"
    _, pairs = doc.summarize(_runs())
    assert pairs["tamiyo@beta-deep-w8"]["reference"] == "host@beta-deep-w8" and "host@alpha-w8-b3" not in pairs
    assert pairs["heuristic@alpha-w8-b3"]["mean_diff"] == pytest.approx(0.010)


def test_the_pooled_interval_is_the_t_interval_of_every_host_and_seed_pair():
    lines, result = transfer.transfer(_runs(), {"file": "tamiyo.pt", "sha256": "ab" * 32})
    diffs = [0.010, 0.012, 0.008, 0.006, 0.004, 0.010]
    m = sum(diffs) / 6
    half = 2.571 * math.sqrt(sum((d - m) ** 2 for d in diffs) / 5) / math.sqrt(6)  # t(0.975, 5) x sd / sqrt(n)
    assert result["pooled"]["n"] == 6 and result["pooled"]["mean_diff"] == pytest.approx(m)
    assert result["pooled"]["ci95"] == pytest.approx([m - half, m + half])
    alpha = result["hosts"]["alpha-w8-b3"]
    assert alpha["diffs"]["tamiyo - host"]["mean_diff"] == pytest.approx(0.020)
    assert alpha["diffs"]["tamiyo - heuristic"]["mean_diff"] == pytest.approx(0.010)
    assert alpha["arms"]["tamiyo"]["fossils_per_run"] == pytest.approx(2 / 3) and alpha["host_params"] == 1234
    assert result["in_distribution"]["tamiyo-deep - heuristic-deep"]["mean_diff"] == pytest.approx(0.01)
    assert [t["met"] for t in result["targets"]] == [True, True, True]
    text = "\n".join(lines)
    assert text.startswith("## Tamiyo on hosts she never saw") and "`tamiyo.pt` (sha256 `abababababab…`)" in text
    assert "### alpha-w8-b3 (1,234 parameters)" in text and "| tamiyo | 3 |" in text
    assert f"| tamiyo − heuristic, pooled over 2 unseen hosts | {doc.pts(result['pooled'])} | 6 |" in text


def test_the_pooled_target_needs_half_a_point_and_an_interval_above_zero():
    assert _targets(_runs())[0][0] is True
    small = {name: [x - 0.004 for x in lead] for name, (_, _, lead) in HOSTS.items()}  # +0.43 pts, clear of zero
    ok, detail = _targets(_runs(small))[0]
    assert ok is False and "+0.43 pts" in detail
    noisy = {"alpha-w8-b3": [0.06, -0.03, 0.01], "beta-deep-w8": [0.02, -0.02, 0.0]}  # +0.67 pts, spanning zero
    assert _targets(_runs(noisy))[0][0] is False
    ok, detail = _targets(_runs(drop={"tamiyo@beta-deep-w8"}))[0]
    assert ok is None and detail == "not run: tamiyo@beta-deep-w8"  # not pooled over the hosts that happened to run


def test_tamiyo_must_beat_the_host_alone_on_every_unseen_host():
    assert _targets(_runs())[1][0] is True
    # on beta Tamiyo falls to the host's level on one seed: the interval reaches below zero
    ok, detail = _targets(_runs({"beta-deep-w8": [0.006, -0.005, 0.010]}))[1]
    assert ok is False and "beta-deep-w8: tamiyo − host" in detail
    ok, detail = _targets(_runs(drop={"host@alpha-w8-b3"}))[1]
    assert ok is None and detail == "not run: host@alpha-w8-b3"


def test_on_the_benchmark_host_tamiyo_must_match_the_heuristic_on_average():
    assert _targets(_runs())[2] == (True, "tamiyo − heuristic +0.10 pts [-0.33, +0.53] on 3 seeds")  # ± t(0.975, 2) · 0.17 / √3
    assert _targets(_runs(home_lead=(0.002, -0.004, 0.001)))[2][0] is False  # -0.03 pts
    assert _targets(_runs(drop={"tamiyo"}))[2] == (None, "not run: tamiyo")


def test_no_tamiyo_and_no_unseen_host_is_not_measured():
    runs = {k: r for k, r in _runs().items() if "@" not in k[0] and not k[0].startswith("tamiyo")}
    lines, result = transfer.transfer(runs)
    assert [t["met"] for t in result["targets"]] == [None, None, None]
    assert result["hosts"] == {} and result["pooled"] is None and "No unseen host was run." in lines
