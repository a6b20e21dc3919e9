"""The growth-lever study runs whole at the smoke scale and writes one row per lever."""

from __future__ import annotations

from tests.tools.test_evidence import _load

levers = _load("growth_levers")


def test_the_smoke_study_writes_a_row_for_every_lever_and_resumes(tmp_path):
    args = ["--scale", "smoke", "--seeds", "1", "--work", str(tmp_path / "work"), "--out", str(tmp_path)]
    assert levers.main(args) == 0
    table = (tmp_path / "growth-levers-smoke.md").read_text()
    arms = list(levers.arms(levers.Benchmark(levers.SCALES["smoke"], tmp_path / "w", tmp_path, "unused"), "depthwise"))
    for arm in [*arms, "static-same"]:
        assert f"| {arm} |" in table
    runs = (tmp_path / "work" / "runs.jsonl").read_text().splitlines()
    assert len(runs) == len(arms) + 2  # the host, every arm and static-same on one seed
    assert levers.main(args) == 0  # every run is in the log: nothing is repeated
    assert (tmp_path / "work" / "runs.jsonl").read_text().splitlines() == runs


def test_chosen_arms_run_on_the_deeper_host(tmp_path):
    import json

    args = ["--scale", "smoke", "--seeds", "1", "--work", str(tmp_path / "work"), "--out", str(tmp_path), "--deep"]
    assert levers.main([*args, "--arms", "auto+window", "no-such-arm"]) == 2
    assert levers.main([*args, "--arms", "auto+window"]) == 0
    runs = [json.loads(line) for line in (tmp_path / "work" / "runs.jsonl").read_text().splitlines()]
    assert [r["arm"] for r in runs] == ["host", "auto+window", "static-same"]
    bench = levers.Benchmark(levers.SCALES["smoke"], tmp_path / "w", tmp_path, "unused")
    deep, narrow = (sum(p.numel() for p in host.parameters()) for host in (bench.deep, bench.host))
    assert deep > narrow and {r["host_params"] for r in runs} == {deep}
    assert "| auto+window |" in (tmp_path / "growth-levers-smoke-deep.md").read_text()
