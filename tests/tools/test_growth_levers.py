"""The growth-lever study runs whole at the smoke scale and writes one row per lever."""

from __future__ import annotations

from tests.tools.test_evidence import _load

levers = _load("growth_levers")


def test_the_smoke_study_writes_a_row_for_every_lever_and_resumes(tmp_path):
    args = ["--scale", "smoke", "--seeds", "1", "--work", str(tmp_path / "work"), "--out", str(tmp_path)]
    assert levers.main(args) == 0
    table = (tmp_path / "growth-levers-smoke.md").read_text()
    for arm in ("before", "early", "early+peak", "early+peak+harm", "static-same"):
        assert f"| {arm} |" in table
    runs = (tmp_path / "work" / "runs.jsonl").read_text().splitlines()
    assert len(runs) == 6  # the host and five arms on one seed
    assert levers.main(args) == 0  # every run is in the log: nothing is repeated
    assert (tmp_path / "work" / "runs.jsonl").read_text().splitlines() == runs
