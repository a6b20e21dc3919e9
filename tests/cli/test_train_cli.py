"""`esper train`, `esper grow` and `esper report` as a user runs them (in-process, on tiny settings)."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

import esper
from esper.cli.main import main
from esper.data.splits import load_data
from esper.runs.metrics import read_jsonl
from tests.cli.hosts import HOST

TINY = ["--data", "synthetic", "--limit", "120", "--epochs", "2", "--batch-size", "32", "--no-progress"]


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    path = tmp_path_factory.mktemp("host") / "small.py"
    path.write_text(HOST)
    return str(path)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, host):
    """A finished 2 x 2 run, shared by the tests that read it (its two hosts trained as one)."""
    out = tmp_path_factory.mktemp("runs") / "tiny"
    args = ["train", "--host", host, "--episodes", "2", "--envs", "2", "--runner", "batched", "--out", str(out), *TINY]
    assert main(args) == 0
    return out


def test_train_writes_the_run_directory(trained):
    for name in ("config.yaml", "metrics.jsonl", "checkpoint.pt", "tamiyo.pt"):
        assert (trained / name).is_file(), name
    assert list((trained / "tb").glob("events.out.tfevents.*"))
    kinds = [r["kind"] for r in read_jsonl(trained / "metrics.jsonl")]
    assert kinds.count("episode") == 2 and kinds.count("update") == 1
    cfg = yaml.safe_load((trained / "config.yaml").read_text())
    assert cfg["limit"] == 120 and cfg["env"]["epochs"] == 2 and cfg["envs"] == 2 and cfg["runner"] == "batched"


def test_train_refuses_to_overwrite_and_resumes(trained, host, capsys):
    assert main(["train", "--host", host, "--episodes", "2", "--out", str(trained), *TINY]) == 2
    assert "--resume" in capsys.readouterr().err
    assert main(["train", "--out", str(trained), "--resume", "--episodes", "4", "--no-progress"]) == 0
    records = read_jsonl(trained / "metrics.jsonl")
    assert sorted(r["episode"] for r in records if r["kind"] == "episode") == [0, 1, 2, 3]
    assert torch.load(trained / "checkpoint.pt", weights_only=True)["episodes_done"] == 4
    # A setting that would change the run is refused on resume.
    assert main(["train", "--out", str(trained), "--resume", "--episodes", "6", "--lr", "0.3", "--no-progress"]) == 2
    assert "env.lr" in capsys.readouterr().err


def test_a_config_file_repeats_a_run(trained, host, tmp_path):
    out = tmp_path / "again"
    assert main(["train", "--config", str(trained / "config.yaml"), "--episodes", "2", "--out", str(out), "--no-progress"]) == 0
    first = yaml.safe_load((trained / "config.yaml").read_text())
    second = yaml.safe_load((out / "config.yaml").read_text())
    first["episodes"] = second["episodes"]
    assert first == second


def test_report_of_a_training_run(trained, capsys):
    assert main(["report", str(trained)]) == 0
    for name in ("episodes.png", "heads.png", "actions.png", "slots.png", "report.md"):
        assert (trained / name).is_file(), name
    text = (trained / "report.md").read_text()
    assert "![PPO health](heads.png)" in text and "explained variance" in text


@pytest.mark.parametrize("policy", ["heuristic", "random", "wait", "tamiyo"])
def test_grow_with_each_kind_of_policy(policy, trained, host, tmp_path):
    out = tmp_path / "grown"
    spec = str(trained / "tamiyo.pt") if policy == "tamiyo" else policy
    args = ["grow", "--policy", spec, "--out", str(out)]
    args += ["--no-progress", "--trust-host-code"] if policy == "tamiyo" else ["--host", host, *TINY]
    assert main(args) == 0
    for name in ("metrics.jsonl", "edits.yaml", "summary.json", "report.md", "accuracy.png", "slots.png", "params.png"):
        assert (out / name).is_file(), name
    epochs = [r for r in read_jsonl(out / "metrics.jsonl") if r["kind"] == "epoch"]
    assert len(epochs) == 2 and {"val_acc", "edit", "slots", "reward"} <= set(epochs[0])
    edits = yaml.safe_load((out / "edits.yaml").read_text())
    # a decision at each of the 2 ticks, and any advance the plane made on its own between them
    assert sorted({e["tick"] for e in edits}) == [0, 1] and all("op" in e for e in edits)
    model = esper.load(out / "model", trust_host_code=True)
    assert model.plane.ticks == 2
    summary = json.loads((out / "summary.json").read_text())
    assert summary["policy"] == spec and 0 <= summary["test_acc"] <= 1


def test_grow_heuristic_fossilizes_and_saves_the_model_it_grew(host, tmp_path):
    # Two epochs only ever see WAIT: eight let the heuristic germinate, train, blend and fossilize.
    # A probe of a few dozen images measures contributions of a few images either way, so the
    # cull rules are turned off here (tests/tamiyo/test_baselines.py covers them).
    settings = tmp_path / "heuristic.yaml"
    settings.write_text("heuristic: {tolerance: 1.0, decline: 1.0, loss_rise: .inf}\n")
    out = tmp_path / "grown"
    args = ["grow", "--policy", "heuristic", "--config", str(settings), "--host", host, "--out", str(out), *TINY]
    assert main([*args, "--epochs", "8"]) == 0
    ops = [e["op"] for e in yaml.safe_load((out / "edits.yaml").read_text())]
    assert [op for op in ops if op != "WAIT"][:4] == ["GERMINATE", "ADVANCE", "ADVANCE", "FOSSILIZE"], ops
    summary = json.loads((out / "summary.json").read_text())
    assert summary["fossilized"] == ops.count("FOSSILIZE") >= 1 and summary["params"] > summary["host_params"]
    model = esper.load(out / "model", trust_host_code=True)
    assert [s.stage.name for s in model.plane.slots.values()].count("FOSSILIZED") == summary["fossilized"]
    assert [e.op.name for e in model.plane.edits] == ops
    assert sum(p.numel() for p in model.parameters()) == summary["params"]
    # The saved model is the grown one: it scores on the test split exactly what the run reported.
    test = load_data("synthetic", limit=120, progress=False).test
    model.eval()
    with torch.no_grad():
        correct = sum(int((model(x).argmax(-1) == y).sum()) for x, y in test.batches(64, shuffle=False))
    assert correct / len(test) == summary["test_acc"]


def test_grow_baseline_trains_the_host_alone_too(host, tmp_path):
    out = tmp_path / "cmp"
    assert main(["grow", "--policy", "heuristic", "--host", host, "--out", str(out), "--baseline", *TINY]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["baseline"]["params"] == summary["host_params"]
    assert summary["baseline"]["train_flops"] == summary["host_train_flops"]  # the host alone, counted two ways
    runs = {r["run"] for r in read_jsonl(out / "metrics.jsonl")}
    assert runs == {"grown", "baseline"}


@pytest.mark.parametrize(
    "args, needle",
    [
        (["grow", "--policy", "no/such/tamiyo.pt"], "no such file"),
        (["grow", "--policy", "heuristic", "--data", "imagenet-please"], "unknown dataset"),
        (["grow", "--policy", "heuristic", "--device", "cuda"], "cuda"),
        (["grow", "--policy", "heuristic", "--epochs", "0"], "at least 1"),
        (["grow", "--policy", "heuristic", "--host", "missing.py"], "no such model file"),
        (["train", "--episodes", "1"], "--host is required"),
        (["report", "no/such/dir"], "no such run directory"),
    ],
)
def test_mistakes_are_one_line_usage_errors(args, needle, host, tmp_path, capsys):
    if "--host" not in args and args[0] == "grow":
        args = [*args, "--host", host]
    if args[0] in ("grow", "train"):
        args = [*args, "--out", str(tmp_path / "x"), "--no-progress", "--limit", "50"]
    if "cuda" in args and torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1, err


def test_a_policy_file_that_is_not_one(tmp_path, host, capsys):
    bogus = tmp_path / "bogus.pt"
    torch.save({"hello": 1}, bogus)
    assert main(["grow", "--policy", str(bogus), "--host", host, "--out", str(tmp_path / "o"), *TINY]) == 2
    assert "not a Tamiyo policy" in capsys.readouterr().err


def test_report_of_an_empty_directory(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "metrics.jsonl" in capsys.readouterr().err
