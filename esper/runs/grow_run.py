"""The one writer of a grow run's directory, whoever grew it: `esper grow`, a Gardener's
`save`, the evidence tools.

    out/summary.json   the run in numbers (an EpisodeSummary's record plus the run's own fields)
    out/edits.yaml     the edit log: esper.replay rebuilds the structure from it
    out/model/         esper.save of the grown model (when given)
    out/config.yaml    the settings it ran with (when given)
    out/metrics.jsonl  one record per decision (when given; esper grow streams its own)
    out/report.md      with its plots (when asked: it needs matplotlib)
"""

from __future__ import annotations

import json
from pathlib import Path

from esper.kasmina.checkpoint import save
from esper.leyline import Edit, edits_to_yaml
from esper.runs.config import save_yaml
from esper.runs.metrics import JSONL_NAME, clean, write_jsonl_atomic
from esper.runs.report import make_report


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
    """Write a grow run into `out` (created if needed); returns report.md when `report`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if records is not None:
        write_jsonl_atomic(out / JSONL_NAME, [{"kind": "epoch", **r} for r in records])
    if model is not None:
        save(model, out / "model")
    if config is not None:
        save_yaml(config, out / "config.yaml")
    (out / "edits.yaml").write_text(edits_to_yaml(edits))
    (out / "summary.json").write_text(json.dumps(clean(summary), indent=2))
    return make_report(out) if report else None
