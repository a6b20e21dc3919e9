"""The one writer of a grow run's directory, whoever grew it: `esper grow`, a Gardener's
`save`, the evidence tools.

    out/summary.json   the run in numbers (an EpisodeSummary's record plus the run's own fields)
    out/edits.yaml     the edit log: esper.replay rebuilds the structure from it
    out/model/         esper.save of the grown model (when given)
    out/config.yaml    the settings it ran with (when given): those that apply to growing,
                       not PPO's, imitation's or the training run's (see grow_settings)
    out/metrics.jsonl  one record per decision (when given; esper grow streams its own)
    out/report.md      with its plots (when asked: it needs matplotlib)
"""

from __future__ import annotations

import json
from pathlib import Path

from esper.kasmina.checkpoint import save
from esper.leyline import Edit, edits_to_yaml
from esper.runs.config import save_yaml, to_dict
from esper.runs.metrics import JSONL_NAME, clean, write_jsonl_atomic
from esper.runs.report import make_report, trained_policy

# Settings of an `esper train` run (TrainConfig) that no grow run reads: how many episodes in
# how many environments, the warm start, checkpoints, Tamiyo's width, PPO and imitation.
TRAINING_ONLY = ("episodes", "envs", "runner", "warm_start", "value_warm_epochs", "checkpoint_every", "hidden", "ppo", "imitation")


def grow_settings(config, summary: dict) -> dict:
    """The sections of a run's settings (a TrainConfig or its dict) that apply to a grow run
    with `summary`'s policy: the host, data, seed, device, vocabulary and host training
    (env) always; `heuristic` only for the heuristic; `reward` only for a trained Tamiyo,
    whose reward it is (a built-in policy's run is judged by accuracy, not reward). A file
    with fewer keys still loads with `--config`: what it leaves out keeps its default."""
    settings = {k: v for k, v in to_dict(config).items() if k not in TRAINING_ONLY}
    if summary.get("policy") != "heuristic":
        settings.pop("heuristic", None)
    if not trained_policy(summary):
        settings.pop("reward", None)
    return settings


def write_grow_run(
    out: str | Path,
    *,
    summary: dict,
    edits: list[Edit],
    model=None,
    config=None,
    records: list[dict] | None = None,
    report: bool = True,
) -> Path | None:
    """Write a grow run into `out` (created if needed); returns report.md when `report`.
    `config`: the settings it ran with (a TrainConfig or its dict), of which config.yaml
    keeps those that apply (`grow_settings`)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if records is not None:
        write_jsonl_atomic(out / JSONL_NAME, [{"kind": "epoch", **r} for r in records])
    if model is not None:
        save(model, out / "model")
    if config is not None:
        save_yaml(grow_settings(config, summary), out / "config.yaml")
    (out / "edits.yaml").write_text(edits_to_yaml(edits))
    (out / "summary.json").write_text(json.dumps(clean(summary), indent=2))
    return make_report(out) if report else None
