"""A grow run with a baseline says in one line whether growth helped, numbers included."""

from __future__ import annotations

from esper.runs.report import verdict

GROWN = {"test_acc": 0.612, "test_loss": 1.10, "param_ratio": 0.189}


def test_the_verdict_says_when_growth_helped_and_by_how_much():
    line = verdict({**GROWN, "baseline": {"test_acc": 0.600, "test_loss": 1.2}})
    assert line.startswith("growth helped on this seed")
    assert "0.612 against 0.600 for the host alone (+1.2 points, +18.9% parameters)" in line


def test_the_verdict_says_plainly_when_growth_did_not_help():
    assert verdict({**GROWN, "baseline": {"test_acc": 0.620, "test_loss": 1.0}}).startswith("growth did not help on this seed")
    assert "(-0.8 points" in verdict({**GROWN, "baseline": {"test_acc": 0.620, "test_loss": 1.0}})
    assert verdict({**GROWN, "baseline": {"test_acc": 0.612, "test_loss": 1.0}}).startswith("growth did not help")  # a tie


def test_next_token_runs_are_judged_by_their_test_loss():
    grown = {**GROWN, "task": "next_token", "test_loss": 1.50}
    assert verdict({**grown, "baseline": {"test_acc": 0.9, "test_loss": 1.55}}).startswith("growth helped")
    assert "test loss 1.5000 against 1.5500" in verdict({**grown, "baseline": {"test_acc": 0.9, "test_loss": 1.55}})
    assert verdict({**grown, "baseline": {"test_acc": 0.1, "test_loss": 1.45}}).startswith("growth did not help")


def test_without_a_baseline_there_is_no_verdict():
    assert verdict(GROWN) is None
