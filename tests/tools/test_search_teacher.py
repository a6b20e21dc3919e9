"""The teacher search: every point of its space is a valid rule, the benchmark's rule is one
of them, and the refit moves each setting's distribution toward the elite's choices."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from esper.tamiyo import HeuristicConfig
from tests.tools.test_evidence import _load

search = _load("search_teacher")

choices = st.fixed_dictionaries({name: st.sampled_from(values) for name, values in search.SPACE.items()})


@given(choices)
def test_every_point_of_the_space_is_a_rule(choice):
    rule = search.rule(choice)
    assert rule.blueprint_preference[0] == choice["preferred"]
    assert all(getattr(rule, name) == value for name, value in choice.items() if name != "preferred")


def test_the_benchmarks_rule_is_in_the_space_and_is_every_slot():
    assert all(search.BENCHMARK[name] in values for name, values in search.SPACE.items())
    assert search.rule(search.BENCHMARK) == HeuristicConfig.every_slot("depthwise")


@given(st.lists(choices, min_size=1, max_size=5), st.floats(0.0, 1.0))
def test_refit_mixes_the_elites_frequencies_into_the_old_distribution(elite, smoothing):
    uniform = {name: [1 / len(values)] * len(values) for name, values in search.SPACE.items()}
    new = search.refit(uniform, elite, smoothing)
    for name, values in search.SPACE.items():
        assert math.isclose(sum(new[name]), 1.0)
        for value, p, old in zip(values, new[name], uniform[name]):
            freq = sum(c[name] == value for c in elite) / len(elite)
            assert math.isclose(p, smoothing * freq + (1 - smoothing) * old, abs_tol=1e-12)
    # with full smoothing an elite that agrees everywhere is certain
    one = search.refit(uniform, [elite[0]] * 3, 1.0)
    for name, values in search.SPACE.items():
        assert one[name] == [float(v == elite[0][name]) for v in values]


@pytest.mark.slow
def test_a_small_search_scores_the_benchmark_and_a_draw_then_compares_on_fresh_seeds(tmp_path):
    args = ["--iterations", "1", "--population", "1", "--hosts", "plain-w8-b4", "--final-seeds", "1"]
    assert search.main(args + ["--data", "synthetic", "--work", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "result.json").read_text())
    assert set(result["search_gain"]) == {"best", "benchmark"} and result["fresh_best_minus_benchmark"]["n"] == 1
    assert result["search_gain"]["best"] >= result["search_gain"]["benchmark"]  # the best of a population that holds it
    # the host alone, the benchmark's rule and one draw on the search seed, then the host and both rules on a fresh one
    assert result["episodes"] <= 6
