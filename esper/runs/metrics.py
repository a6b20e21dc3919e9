"""Metrics: one JSONL file (the record of truth) and TensorBoard event files beside it.

Every record is one JSON object per line with a "kind":

    run        a (re)start of a run: time, episodes done so far
    episode    one host episode: return, reward components, accuracies, ops, fossils, timeline
    update     one PPO update: per-head entropy, KL, clip fraction, value loss,
               explained variance, action histograms, health warnings
    warm_start the behaviour-cloning warm start: losses and agreement with the teacher
    epoch      one decision step of `esper grow`: accuracies, edit, slots, reward

Non-finite numbers are written as null (JSON has no NaN). TensorBoard gets the numeric
fields as scalars, all on one global step (episodes so far), so that a resumed run can
purge what it is about to redo.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, Callable, Iterable

from esper.runs.files import write_atomic

JSONL_NAME = "metrics.jsonl"


def clean(value: Any) -> Any:
    """JSON-safe copy: NaN and infinities become None, tuples lists, tensors numbers."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean(v) for v in value]
    if hasattr(value, "item") and callable(value.item):
        try:
            return clean(value.item())
        except (ValueError, RuntimeError):
            return str(value)
    return value


def flatten(record: dict, prefix: str = "") -> dict[str, float]:
    """Numeric leaves of a nested record as 'a/b/c' -> value (for TensorBoard)."""
    out: dict[str, float] = {}
    for key, value in record.items():
        name = f"{prefix}{key}"
        if isinstance(value, bool):
            out[name] = float(value)
        elif isinstance(value, (int, float)):
            if isinstance(value, int) or math.isfinite(value):
                out[name] = float(value)
        elif isinstance(value, dict):
            out.update(flatten(value, name + "/"))
    return out


def read_jsonl(path: str | Path) -> list[dict]:
    """Every complete record of a JSONL file (a torn last line, from a kill, is skipped)."""
    path = Path(path)
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def write_jsonl_atomic(path: str | Path, records: Iterable[dict]) -> None:
    text = "".join(json.dumps(clean(record)) + "\n" for record in records)
    write_atomic(Path(path), lambda f: f.write(text.encode()))


def truncate_jsonl(path: str | Path, keep: Callable[[dict], bool]) -> int:
    """Rewrite the file with only the records `keep` accepts; returns how many were dropped."""
    records = read_jsonl(path)
    kept = [r for r in records if keep(r)]
    if Path(path).exists():
        write_jsonl_atomic(path, kept)
    return len(records) - len(kept)


class MetricsWriter:
    """Appends records to `run_dir/metrics.jsonl` and mirrors their numbers to
    TensorBoard under `run_dir/tb` (skipped, with a note, if tensorboard is missing)."""

    # Record fields that are not scalars worth a TensorBoard curve.
    SKIP = {"timeline", "slots", "edit", "warnings", "fossil_blueprints", "losses"}

    def __init__(self, run_dir: str | Path, tensorboard: bool = True, purge_step: int | None = None):
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.run_dir / JSONL_NAME
        self._file = open(self.path, "a")
        self.tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(log_dir=str(self.run_dir / "tb"), purge_step=purge_step)
            except Exception:  # tensorboard not installed, or unusable: the JSONL still holds everything
                pass

    def write(self, kind: str, record: dict, step: int | None = None) -> dict:
        """Append one record of this kind; its numbers go to TensorBoard under kind/ at `step`."""
        full = {"kind": kind, "time": time.time(), **record}
        self._file.write(json.dumps(clean(full)) + "\n")
        self._file.flush()
        if self.tb is not None and step is not None:
            numbers = flatten({k: v for k, v in record.items() if k not in self.SKIP})
            for name, value in numbers.items():
                self.tb.add_scalar(f"{kind}/{name}", value, step)
        return full

    def close(self) -> None:
        self._file.close()
        if self.tb is not None:
            self.tb.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
