"""Growing and training on two processes (torchrun, gloo on the CPU)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
import torch
import yaml

from tests.helpers import ROOT

WORKER = ROOT / "tests" / "simic" / "grow_on_ranks.py"


def torchrun(*args, nproc: int = 2, timeout: float = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=timeout)


def ranks_of(out, n: int = 2) -> list[dict]:
    return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(n)]


def test_every_rank_holds_the_same_model_after_every_tick(tmp_path):
    """Rank 0 germinates two seeds, fossilizes one and culls the other; rank 1 applies
    the broadcast edits. Hashes of every parameter and buffer (BatchNorm's running
    statistics included) agree after each tick, and so do the final accuracies."""
    result = torchrun(WORKER, tmp_path, "batchnorm")
    assert result.returncode == 0, result.stderr[-3000:]
    a, b = ranks_of(tmp_path)
    assert a["world_size"] == 2 and len(a["ticks"]) == 7
    assert a["ticks"] == b["ticks"]
    assert a["edits"] == b["edits"]
    assert [e["op"] for e in a["edits"] if e["op"] != "WAIT"] == ["GERMINATE", "ADVANCE", "GERMINATE", "ADVANCE", "FOSSILIZE", "CULL"]
    assert a["test_acc"] == b["test_acc"]
    for name, value in a["state"].items():
        assert torch.equal(value, b["state"][name]), name


def test_two_ranks_train_what_one_process_trains(tmp_path):
    """Without BatchNorm (whose statistics are per rank) a batch split over two ranks,
    unevenly (12 and 13 rows), gives the gradient of the whole batch: the grown model
    matches the one process's."""
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir(), two.mkdir()
    assert (r := torchrun(WORKER, one, "groupnorm", nproc=1)).returncode == 0, r.stderr[-3000:]
    assert (r := torchrun(WORKER, two, "groupnorm")).returncode == 0, r.stderr[-3000:]
    (single,), (a, _) = ranks_of(one, 1), ranks_of(two)
    assert single["world_size"] == 1 and single["edits"] == a["edits"]
    assert set(single["state"]) == set(a["state"])
    for name, value in single["state"].items():
        torch.testing.assert_close(a["state"][name], value, atol=2e-4, rtol=1e-3, msg=name)
    assert a["test_acc"] == pytest.approx(single["test_acc"], abs=0.03)


def test_a_rank_that_stops_answering_ends_the_job_with_a_clear_error(tmp_path):
    start = time.monotonic()
    result = torchrun(WORKER, tmp_path, "batchnorm", "hang", timeout=200)
    assert result.returncode != 0
    assert time.monotonic() - start < 150
    assert "DistributedError: rank 0 of 2" in result.stderr and "did not answer within 10 s" in result.stderr, result.stderr[-3000:]


GROW = ["-m", "esper", "grow", "--host", "examples/host_cnn.py", "--data", "synthetic", "--limit", "400",
        "--epochs", "3", "--policy", "random", "--no-progress"]


def test_esper_grow_under_torchrun_writes_once_from_rank_0(tmp_path):
    out = tmp_path / "run"
    result = torchrun(*GROW, "--out", out)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("esper grow: examples/host_cnn.py") == 1  # one rank speaks
    assert "2 processes" in result.stdout
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r.get("kind") == "epoch"] == [1, 2, 3]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2
    assert yaml.safe_load((out / "config.yaml").read_text())["world_size"] == 2
    # The checkpoint rank 0 wrote loads on one process, with the grown structure.
    import esper
    from esper.kasmina.hosts import load_model_file

    host, _ = load_model_file(ROOT / "examples" / "host_cnn.py")
    model = esper.load(out / "model", host=host)
    edits = yaml.safe_load((out / "edits.yaml").read_text())
    assert len(model.plane.edits) == len(edits) == 3


def test_esper_train_under_torchrun_gathers_rollouts_to_rank_0(tmp_path):
    out = tmp_path / "run"
    args = ["-m", "esper", "train", "--host", "examples/host_cnn.py", "--data", "synthetic", "--limit", "300",
            "--epochs", "2", "--episodes", "2", "--envs", "1", "--no-progress", "--out", out]
    result = torchrun(*args)
    assert result.returncode == 0, result.stderr[-3000:]
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    episodes = [r for r in records if r["kind"] == "episode"]
    updates = [r for r in records if r["kind"] == "update"]
    assert [e["episode"] for e in episodes] == [0, 1] and len(updates) == 1  # one rank's episode each, one update
    assert updates[0]["throughput"]["processes"] == 2
    assert updates[0]["throughput"]["images"] == 2 * 2 * 270  # both ranks' episodes: 2 epochs of 270 images each
    assert len({e["seed"] for e in episodes}) == 2
    assert yaml.safe_load((out / "config.yaml").read_text())["world_size"] == 2
    # Resume on one process from rank 0's checkpoint: two more episodes.
    more = subprocess.run([sys.executable, *args[:-2], "--out", str(out), "--resume", "--episodes", "4", "--envs", "1"],
                          capture_output=True, text=True, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=240)
    assert more.returncode == 0, more.stderr[-3000:]
    assert "resuming" in more.stdout
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["episode"] for r in records if r["kind"] == "episode"] == [0, 1, 2, 3]
