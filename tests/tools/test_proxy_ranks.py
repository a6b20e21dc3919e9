"""The proxy check: full-regime gains are paired by seed with the host alone on the same
host, and Spearman's rho is the correlation of ranks."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.tools.test_evidence import _load

ranks = _load("proxy_ranks")


@given(st.lists(st.integers(-1000, 1000), min_size=3, max_size=12, unique=True))
def test_spearman_reads_only_the_order(xs):
    assert math.isclose(ranks.spearman(xs, [x**3 + 1 for x in xs]), 1.0)  # any increasing map: the same order
    assert math.isclose(ranks.spearman(xs, [-x for x in xs]), -1.0)


def test_spearman_gives_ties_their_mean_rank():
    # ranks (0, 1.5, 1.5, 3) against (0, 1, 2, 3): covariance 4.5 / sqrt(4.5 * 5)
    assert math.isclose(ranks.spearman([1, 2, 2, 3], [1, 2, 3, 4]), math.sqrt(0.9), rel_tol=1e-12)


def test_full_gains_pair_each_arm_with_its_own_host_alone(tmp_path):
    log = tmp_path / "runs.jsonl"
    records = []
    for s in range(3):
        records += [
            {"arm": "host", "seed": s, "test_acc": 0.50 + 0.01 * s},
            {"arm": "heuristic", "seed": s, "test_acc": 0.52 + 0.01 * s},  # +2 points on the evidence host
            {"arm": "host@vgg-w12-b4", "seed": s, "test_acc": 0.60 - 0.01 * s},
            {"arm": "tamiyo@vgg-w12-b4", "seed": s, "test_acc": 0.59 - 0.01 * s},  # -1 point on vgg
        ]
    records.append({"arm": "random", "seed": 0, "test_acc": 0.9})  # one seed of three: left out
    log.write_text("".join(json.dumps(r) + "\n" for r in records))
    gains = ranks.full_gains(log, 3, {"heuristic", "tamiyo", "random"})
    assert gains.keys() == {("heuristic", ranks.EVIDENCE_HOST), ("tamiyo", "vgg-w12-b4")}
    assert math.isclose(gains[("heuristic", ranks.EVIDENCE_HOST)], 2.0)
    assert math.isclose(gains[("tamiyo", "vgg-w12-b4")], -1.0)
    assert ranks.full_gains(log, 3, {"random"}) == {}


@pytest.mark.slow
def test_the_tool_replays_the_logged_policies_on_the_proxy_and_caches_them(tmp_path, capsys):
    log = tmp_path / "runs.jsonl"
    kinds = {"host": 0.50, "heuristic": 0.53, "heuristic-budget": 0.52, "random": 0.51}
    rows = [{"arm": f"{k}@plain-w8-b4", "seed": s, "test_acc": a} for k, a in kinds.items() for s in range(5)]
    log.write_text("".join(json.dumps(r) + "\n" for r in rows))
    args = ["--log", str(log), "--data", "synthetic", "--seeds", "1", "--out", str(tmp_path), "--work", str(tmp_path / "work")]
    assert ranks.main(args) == 0
    record = json.loads((tmp_path / "proxy_ranks.json").read_text())
    assert {p["policy"] for p in record["pairs"]} == {"heuristic", "heuristic-budget", "random"}
    assert [p["full_gain"] for p in sorted(record["pairs"], key=lambda p: p["policy"])] == [3.0, 2.0, 1.0]
    assert -1 <= record["spearman"] <= 1 and set(record["spearman_within_host"]) == {"plain-w8-b4"}
    played = (tmp_path / "work" / "proxy.jsonl").read_text().count("\n")
    assert played == 4  # the host alone and three policies, one seed each
    assert ranks.main(args) == 0  # a rerun plays nothing new
    assert (tmp_path / "work" / "proxy.jsonl").read_text().count("\n") == played
