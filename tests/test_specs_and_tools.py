"""The shipped training spec loads and runs as it stands, and each benchmark in tools/ runs in a smoke mode."""

import importlib.util
import json
import os
import subprocess
import sys

import torch
import yaml

from esper.runs import config as config_io
from esper.runs.metrics import read_jsonl
from esper.simic.training import load_config
from tests.helpers import ROOT

SPEC = ROOT / "specs/train_synthetic.yaml"


def _leaves(d, prefix=""):
    for k, v in d.items():
        if isinstance(v, dict):
            yield from _leaves(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


def test_the_training_spec_loads_with_every_value_it_writes():
    cfg = load_config(SPEC)  # strict: an unknown or mistyped key raises
    loaded = dict(_leaves(config_io.to_dict(cfg)))
    for key, value in _leaves(yaml.safe_load(SPEC.read_text())):
        assert loaded[key] == value, key  # nothing dropped, renamed or coerced away
    assert (ROOT / cfg.host).is_file() and cfg.data == "synthetic"
    assert cfg.reward.gamma == cfg.ppo.gamma  # the shaping discount must be PPO's


def test_the_training_spec_trains_shortened(tmp_path, monkeypatch):
    from esper.cli.main import main

    out = tmp_path / "ppo"
    short = ["--episodes", "2", "--envs", "2", "--warm-start", "2", "--limit", "64", "--epochs", "2", "--batch-size", "32"]
    monkeypatch.chdir(ROOT)  # the spec names its host relative to the repository
    assert main(["train", "--config", str(SPEC), "--out", str(out), "--no-progress", *short]) == 0
    kinds = [r["kind"] for r in read_jsonl(out / "metrics.jsonl")]
    assert "warm_start" in kinds and kinds.count("update") >= 1 and (out / "tamiyo.pt").is_file()


def _tool(*args, env=None):
    r = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=300, env={**os.environ, **(env or {})})
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout


def test_bench_export_smoke():
    out = _tool("tools/bench_export.py", "--batch", "2", "--reps", "1", "--device", "cpu")
    assert "ratio exported / hand-written" in out


def test_bench_instrument_smoke():
    out = _tool("tools/bench_instrument.py", "--models", "host_cnn", "--steps", "2", "--device", "cpu")
    assert "host_cnn" in out


def test_bench_overhead_smoke(capsys):
    spec = importlib.util.spec_from_file_location("bench_overhead", ROOT / "tools" / "bench_overhead.py")
    bench_overhead = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench_overhead)
    # --threads: main sets the thread count, which must not change for the tests after this one
    short = ["--sizes", "launch", "--modes", "eager", "--rounds", "2", "--warmup", "1", "--threads", str(torch.get_num_threads())]
    table = bench_overhead.main(short)
    out = capsys.readouterr().out
    assert list(table) == [("launch", "eager")]
    for variant in ("host", "dormant", "training", "blend:linear", "blend:gated", "fossil", "fossil:gated"):
        assert f"| {variant} | " in out, variant
    assert table[("launch", "eager")]["training"]["vs_fossil"] > 0


def test_gpu_check_runs_end_to_end_on_the_cpu(tmp_path):
    """tools/gpu_check.py --cpu: every part (bench_kernels, the kernel tests, bench_envs,
    esper grow, bench_overhead) on tiny sizes, so the script a GPU lease runs first cannot rot."""
    out = _tool("tools/gpu_check.py", "--cpu", "--out", str(tmp_path), env={"TRITON_INTERPRET": "1"})
    result = json.loads((tmp_path / "gpu_check.json").read_text())
    for part in ("kernels", "tests", "envs", "grow", "overhead"):
        assert result[part]["ok"], (part, result[part].get("error"))
    assert {(r["variant"], r["pass"]) for r in result["kernels"]["result"]} >= {("kernel", "fwd+bwd"), ("compile", "fwd")}
    assert result["tests"]["result"]["returncode"] == 0 and result["tests"]["result"]["passed"] > 0
    runs = {(r["k"], r["runner"]) for r in result["envs"]["result"]}
    assert runs == {(1, "bare host"), (1, "sequential"), (2, "sequential"), (2, "batched")}
    assert 0 <= result["grow"]["result"]["test_acc"] <= 1 and result["grow"]["result"]["wall_ratio"] > 0
    assert set(result["overhead"]["result"]) == {"launch eager"}
    table = (tmp_path / "gpu_check.md").read_text()
    for claim in (
        "| kernel tests on this device | all pass |",
        "K=2 batched",
        "| one env train img/s vs the bare host | >= 0.60x |",
        "| esper grow wall time vs the host alone's | <= 1.2x |",
        "| launch eager step, dormant vs bare host | <= 1.05x |",
        "| launch eager step, TRAINING/BLENDING vs fossilized",
    ):
        assert claim in table, claim
    assert table in out
