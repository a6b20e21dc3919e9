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
from hypothesis import given
from hypothesis import strategies as st

from esper.kasmina.hosts import reinitialized_copies
from esper.leyline import Edit, Op, Vocabulary
from esper.simic.distributed import Ranks, fingerprint, shard
from esper.simic.env import EnvConfig, GrowthEnv
from esper.simic.vectorized import VectorEnv, decide_with, merge_rollouts, run_episodes, sample_with
from esper.tamiyo import ActionMasks, ActionSample, TamiyoPolicy
from tests.helpers import ROOT, named
from tests.simic.toys import TinyCNN, toy_data

WORKER = ROOT / "tests" / "simic" / "grow_on_ranks.py"


def torchrun(*args, nproc: int = 2, timeout: float = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=timeout)


def ranks_of(out, n: int = 2) -> list[dict]:
    return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(n)]


@given(rows=st.integers(1, 300), world=st.integers(1, 8))
def test_shards_cover_the_batch_once_and_their_weights_average_to_the_batch_mean(rows, world):
    """Each rank's mean loss times its weight, averaged over the ranks as DDP does, is the
    batch's mean loss: the weights are rows_r * world / rows."""
    x, y = torch.arange(rows).float().unsqueeze(1), torch.arange(rows)
    parts = [shard(x, y, Ranks(r, world)) for r in range(world)]
    assert torch.equal(torch.cat([p[1] for p in parts]), y)
    losses = torch.rand(rows, dtype=torch.float64)
    ddp = sum(losses[p[1]].mean() * p[2] for p in parts if len(p[1])) / world
    assert float(ddp) == pytest.approx(float(losses.mean()), rel=1e-12)


def test_the_fingerprint_moves_with_the_edit_log_the_shapes_and_any_weight():
    env = GrowthEnv(reinitialized_copies(TinyCNN()), toy_data(), EnvConfig(training_ticks=None, epochs=2, batch_size=32))
    env.reset(0)
    first = fingerprint(env.mm)
    assert fingerprint(env.mm) == first
    with torch.no_grad():
        next(env.mm.parameters())[0].flatten()[0] += 1e-6
    assert fingerprint(env.mm)[:2] == first[:2] and fingerprint(env.mm)[2] != first[2]
    env.plane.apply(Edit(Op.GERMINATE, "block2", "norm", "linear", 1))
    moved = fingerprint(env.mm)
    assert moved[0] != first[0] and moved[1] != first[1]


class Replay:
    """Plays a merged rollout's edits, one decision at a time."""

    def __init__(self, rollout):
        self.steps = [d.edits for d in rollout.decisions]

    def decide(self, observations):
        return self.steps.pop(0)


def test_rollouts_merged_side_by_side_read_as_one_vector_env():
    """What rank 0 gets from two ranks of one environment each is what one process with
    both environments would have logged: summaries in rank order, transitions per step
    with the sampled actions concatenated, throughput summed over the slowest wall."""
    cfg = EnvConfig(training_ticks=None, epochs=2, batch_size=32, blend_steps=1)
    torch.manual_seed(0)
    vocab = Vocabulary(["norm", "depthwise"], ["linear"], 1)
    policy = TamiyoPolicy(vocab, hidden=16)

    def envs(k):
        return VectorEnv(
            [
                GrowthEnv(reinitialized_copies(TinyCNN()), toy_data(), cfg, blueprints=list(vocab.blueprints), blends=list(vocab.blends))
                for _ in range(k)
            ]
        )

    parts = [run_episodes(envs(1), [seed], sample_with(policy)) for seed in (3, 4)]
    merged = merge_rollouts(parts)
    both = run_episodes(envs(2), [3, 4], decide_with(Replay(merged)))
    assert [s.val_acc for s in merged.summaries] == [s.val_acc for s in both.summaries]
    assert [len(d.observations) for d in merged.decisions] == [2, 2]
    for d, a, b in zip(merged.decisions, *(p.decisions for p in parts)):
        assert torch.equal(d.choice.sample.actions, torch.cat([a.choice.sample.actions, b.choice.sample.actions]))
        assert d.rewards == a.rewards + b.rewards
    tp = merged.throughput
    assert tp["images"] == sum(p.throughput["images"] for p in parts) and tp["processes"] == 2
    assert tp["wall_seconds"] == max(p.throughput["wall_seconds"] for p in parts)


def test_samples_of_hosts_with_different_slot_counts_concatenate_padded():
    def sample(rows, slots):
        ones = lambda width: torch.ones(rows, width, dtype=torch.bool)  # noqa: E731
        heads = {"op": torch.zeros(rows)}
        return ActionSample(
            torch.zeros(rows, 4, dtype=torch.long),
            torch.zeros(rows),
            heads,
            heads,
            torch.zeros(rows),
            ActionMasks(ones(5), ones(slots), ones(8), ones(4)),
        )

    cat = ActionSample.cat([sample(2, 3), sample(1, 5)])
    assert cat.masks.slot.shape == (3, 5)
    assert not cat.masks.slot[:2, 3:].any() and cat.masks.slot[2].all()
    assert cat.actions.shape == (3, 4) and cat.head_log_prob["op"].shape == (3,)


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
    assert a["flops"] == b["flops"] and a["flops"][0] > 0  # every rank reads the whole run's compute


def test_a_seed_that_turns_non_finite_on_one_rank_is_culled_on_every_rank(tmp_path):
    """The seed's output is NaN on rank 1's shards only (13 rows of 25); rank 1 must not cull
    it alone during its forward pass: the verdict is shared at guard() and both ranks cull
    it at the same step, and the host goes on training on both."""
    result = torchrun(WORKER, tmp_path, "batchnorm", "nan")
    assert result.returncode == 0, result.stderr[-3000:]
    a, b = ranks_of(tmp_path)
    assert a["edits"] == b["edits"] and a["ticks"] == b["ticks"]
    assert [e["op"] for e in a["edits"] if e["op"] != "WAIT"] == ["GERMINATE", "ADVANCE", "CULL"]
    assert all(torch.isfinite(v).all() for v in a["state"].values() if v.is_floating_point())
    assert a["test_acc"] == b["test_acc"] > 0.25


def test_two_ranks_train_what_one_process_trains(tmp_path):
    """Without BatchNorm (whose statistics are per rank) a batch split over two ranks,
    unevenly (12 and 13 rows), gives the gradient of the whole batch: the grown model
    matches the one process's. Both run in float64 (see grow_on_ranks.py), where summing
    in another order moves the 28 AdamW steps by ~1e-16: torch's float64 tolerance
    (1e-7) leaves that six orders of margin, while a mis-weighted shard changes the
    gradient's direction by ~1/25 and the weights by far more than 1e-7."""
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir(), two.mkdir()
    assert (r := torchrun(WORKER, one, "groupnorm", nproc=1)).returncode == 0, r.stderr[-3000:]
    assert (r := torchrun(WORKER, two, "groupnorm")).returncode == 0, r.stderr[-3000:]
    (single,), (a, _) = ranks_of(one, 1), ranks_of(two)
    assert single["world_size"] == 1 and single["edits"] == a["edits"]
    assert set(single["state"]) == set(a["state"])
    for name, value in single["state"].items():
        assert value.dtype == torch.float64, name
        torch.testing.assert_close(a["state"][name], value, msg=named(name))
    assert a["test_acc"] == single["test_acc"]
    assert a["flops"] == single["flops"]  # each rank measures a shard's worth, scaled to the batch


def test_a_rank_that_stops_answering_ends_the_job_with_a_clear_error(tmp_path):
    start = time.monotonic()
    result = torchrun(WORKER, tmp_path, "batchnorm", "hang", timeout=200)
    assert result.returncode != 0
    assert time.monotonic() - start < 150
    assert "DistributedError: rank 0 of 2" in result.stderr and "did not answer within 10 s" in result.stderr, result.stderr[-3000:]


def test_a_rank_that_dies_ends_the_job(tmp_path):
    start = time.monotonic()
    result = torchrun(WORKER, tmp_path, "batchnorm", "die", timeout=200)
    assert result.returncode != 0 and time.monotonic() - start < 150
    assert "exitcode: 3" in result.stderr, result.stderr[-3000:]  # torchrun names the rank that failed
    assert not (tmp_path / "rank0.pt").exists()  # rank 0 stopped too, before finishing its episode


GROW = [
    "-m",
    "esper",
    "grow",
    "--host",
    "examples/host_cnn.py",
    "--data",
    "synthetic",
    "--limit",
    "400",
    "--epochs",
    "3",
    "--policy",
    "random",
    "--no-progress",
]


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
    assert len(model.plane.edits) == len(edits) and sorted({e["tick"] for e in edits}) == [0, 1, 2]  # 3 decisions, and any advances


def test_esper_train_under_torchrun_gathers_rollouts_to_rank_0(tmp_path):
    out = tmp_path / "run"
    args = [
        "-m",
        "esper",
        "train",
        "--host",
        "examples/host_cnn.py",
        "--data",
        "synthetic",
        "--limit",
        "300",
        "--epochs",
        "2",
        "--episodes",
        "2",
        "--envs",
        "1",
        "--no-progress",
        "--out",
        out,
    ]
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
    # Resume from rank 0's checkpoint, on two processes again: one more round of two episodes.
    more = torchrun(*args[:-2], "--out", out, "--resume", "--episodes", "4", "--envs", "1")
    assert more.returncode == 0, more.stderr[-3000:]
    assert more.stdout.count("resuming") == 1
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["episode"] for r in records if r["kind"] == "episode"] == [0, 1, 2, 3]
    assert [r["update"] for r in records if r["kind"] == "update"] == [0, 1]
