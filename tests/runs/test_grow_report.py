"""A grow run's report speaks to whoever grew it: accuracy, parameters, slots, edits, the
verdict and FLOPs on one epoch axis from the untrained host; Tamiyo's reward and return only
when a trained Tamiyo grew it. Its config.yaml holds only the settings that apply."""

from __future__ import annotations

import json

import pytest
import yaml

from esper.runs import report as report_mod
from esper.runs.grow_run import write_grow_run

pytest.importorskip("matplotlib")

REWARD = {"task": 0.5, "germination": -0.05, "refund": 0.0, "shaping": 0.0, "terminal_acc": 0.0, "param_cost": 0.0}
EDITS = [
    {"op": "GERMINATE", "slot": "block3", "blueprint": "depthwise", "blend": "linear", "steps": 2, "tick": 0},
    {"op": "WAIT", "tick": 1},
    {"op": "FOSSILIZE", "slot": "block3", "tick": 2},
    {"op": "WAIT", "tick": 3},
]
SLOTS = [
    {"block2": ["DORMANT", 0.0, None], "block3": ["TRAINING", 0.0, "depthwise"]},
    {"block2": ["DORMANT", 0.0, None], "block3": ["BLENDING", 1.0, "depthwise"]},
    {"block2": ["DORMANT", 0.0, None], "block3": ["FOSSILIZED", 1.0, "depthwise"], "block3+1": ["DORMANT", 0.0, None]},
    {"block2": ["DORMANT", 0.0, None], "block3": ["FOSSILIZED", 1.0, "depthwise"], "block3+1": ["DORMANT", 0.0, None]},
]


def _records(run: str, grow: bool) -> list[dict]:
    out = []
    for i in range(4):
        out.append(
            {
                "run": run,
                "step": i + 1,
                "epoch": float(i + 1),
                "edit": EDITS[i] if grow else {"op": "WAIT", "tick": i},
                "train_loss": 2.0 - 0.2 * i,
                "train_acc": 0.2 + 0.1 * i,
                "val_loss": 2.1 - 0.2 * i,
                "val_acc": 0.15 + 0.1 * i,
                "reward": {**REWARD, "terminal_acc": 10.0 if i == 3 else 0.0, "total": 0.45},
                "params": 112_682 if grow else 94_762,
                "host_params": 94_762,
                "slots": SLOTS[i] if grow else {"block2": ["DORMANT", 0.0, None], "block3": ["DORMANT", 0.0, None]},
            }
        )
    return out


def grow_run(tmp_path, policy: str, config=None):
    summary = {
        "return": 10.488,
        "reward": REWARD,
        "initial_val_acc": 0.1,
        "val_acc": 0.45,
        "test_acc": 0.44,
        "test_loss": 1.5,
        "params": 112_682,
        "host_params": 94_762,
        "param_ratio": 0.189,
        "germinated": 1,
        "fossilized": 1,
        "fossil_blueprints": ["depthwise"],
        "culled": 0,
        "train_flops": 1.7e11,
        "host_train_flops": 1.3e11,
        "wall_seconds": 20.0,
        "timeline": [{"block2": ["DORMANT", 0.0, None], "block3": ["DORMANT", 0.0, None]}] + SLOTS,
        "policy": policy,
        "host": "examples/host_cnn.py",
        "epochs": 4,
        "baseline": {"val_acc": 0.4, "test_acc": 0.42, "test_loss": 1.6, "params": 94_762, "wall_seconds": 8.0, "train_flops": 1.3e11},
    }
    out = tmp_path / "run"
    report = write_grow_run(out, summary=summary, edits=[], records=_records("grown", True) + _records("baseline", False), config=config)
    return out, report.read_text()


def test_a_heuristic_run_reports_its_growth_and_no_reward(tmp_path):
    out, text = grow_run(tmp_path, "heuristic")
    for word in ("return", "reward", "terminal_acc", "Tamiyo"):
        assert word not in text, word
    assert not (out / "rewards.png").exists()
    assert "**Verdict: growth helped on this seed" in text and "| training FLOPs |" in text and "| parameters |" in text
    assert "### Edits" in text
    assert "| 0 | germinate `depthwise` at `block3` (linear blend over 2 decisions) | 112,682 |" in text
    assert "| 2 | fossilize at `block3` | 112,682 |" in text
    for plot in ("accuracy.png", "loss.png", "slots.png", "params.png"):
        assert f"]({plot})" in text and (out / plot).is_file()


def test_a_trained_tamiyo_run_keeps_her_reward_and_return(tmp_path):
    out, text = grow_run(tmp_path, "runs/ppo/tamiyo.pt")
    assert "Tamiyo's return 10.488" in text and "](rewards.png)" in text and (out / "rewards.png").is_file()


def test_every_grow_plot_runs_on_one_epoch_axis_from_the_untrained_host(tmp_path, monkeypatch):
    seen = {}
    save = report_mod.save_figure

    def spy(fig, path):
        ax = fig.axes[0]
        seen[path.name] = {
            "xlim": ax.get_xlim(),
            "lines": {ln.get_label(): (list(ln.get_xdata()), list(ln.get_ydata())) for ln in ax.get_lines()},
            "legend": [t.get_text() for t in ax.get_legend().get_texts()] if ax.get_legend() else [],
        }
        return save(fig, path)

    monkeypatch.setattr(report_mod, "save_figure", spy)
    _, text = grow_run(tmp_path, "heuristic")
    assert {seen[name]["xlim"] for name in ("accuracy.png", "loss.png", "slots.png", "params.png")} == {seen["params.png"]["xlim"]}
    lo, hi = seen["accuracy.png"]["xlim"]
    assert lo < 0 < 4 < hi
    x, y = seen["accuracy.png"]["lines"]["validation (grown)"]
    assert x[0] == 0 and y[0] == pytest.approx(0.1) and x[-1] == 4  # decision 0: the untrained host
    x, y = seen["accuracy.png"]["lines"]["validation (host alone)"]
    assert x[0] == 0 and y[0] == pytest.approx(0.1)
    # A slot opened after a fossil is named in the legend and under the plot.
    assert "block3+1: slot opened after\nthe fossil in block3" in seen["slots.png"]["legend"]
    assert "`block3+1` is a slot opened after the fossil in `block3`." in text


def test_config_yaml_holds_only_the_settings_that_apply_to_the_run(tmp_path):
    from esper.simic.train_config import TrainConfig, load_config

    cfg = TrainConfig(limit=600).resolved()
    grow_run(tmp_path / "h", "heuristic", config=cfg)
    saved = yaml.safe_load((tmp_path / "h" / "run" / "config.yaml").read_text())
    assert {"host", "data", "limit", "seed", "device", "blueprints", "blends", "env", "heuristic"} <= set(saved)
    assert not {"ppo", "imitation", "episodes", "envs", "runner", "warm_start", "hidden", "reward"} & set(saved)
    again = load_config(tmp_path / "h" / "run" / "config.yaml")  # still a settings file --config reads
    assert again.limit == 600 and again.env == cfg.env and again.blueprints == cfg.blueprints

    grow_run(tmp_path / "t", "runs/ppo/tamiyo.pt", config=cfg)
    saved = yaml.safe_load((tmp_path / "t" / "run" / "config.yaml").read_text())
    assert "reward" in saved and "heuristic" not in saved and "ppo" not in saved
    assert json.loads((tmp_path / "t" / "run" / "summary.json").read_text())["policy"] == "runs/ppo/tamiyo.pt"
