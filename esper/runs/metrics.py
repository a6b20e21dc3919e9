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

Progress on the console goes through `progress_bar`: a live bar on a terminal, plain lines
in a log file.
"""

from __future__ import annotations

import json
import math
import sys
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


# ---- progress on the console ------------------------------------------------------------------------------
def is_terminal(stream) -> bool:
    """Whether `stream` is an interactive terminal (not a file, a pipe or a captured stream)."""
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):  # no isatty, or closed
        return False


def progress_bar(iterable=None, *, total=None, desc: str = "", unit: str = "it", initial: int = 0, disable: bool = False, file=None):
    """Every esper progress bar. On a terminal, tqdm's live bar; on anything else (stderr
    redirected to a log file, a pipe, a CI job) a `PlainProgress` instead, which writes
    whole lines and never the carriage returns a live bar redraws itself with. `disable`:
    nothing at all. Either way the object iterates `iterable`, and has update,
    set_postfix, write and close, and is a context manager."""
    from tqdm import tqdm

    stream = sys.stderr if file is None else file
    if disable:
        return tqdm(iterable, total=total, disable=True)
    if is_terminal(stream):
        return tqdm(iterable, total=total, desc=desc, unit=unit, initial=initial, file=stream, dynamic_ncols=True)
    return PlainProgress(iterable, total=total, desc=desc, unit=unit, initial=initial, file=stream)


class PlainProgress:
    """Progress as plain lines, for logs: one at each tenth of `total` (and at least every
    `every_s` seconds while it moves, the only cadence when the total is unknown), and a
    last one on close, e.g. `grow (grown): 4/8 step (50%), 12s, val_acc=0.283, edit=WAIT`."""

    def __init__(self, iterable=None, *, total=None, desc: str = "", unit: str = "it", initial: int = 0, file=None, every_s: float = 60.0):
        self.iterable = iterable
        if total is None and hasattr(iterable, "__len__"):
            total = len(iterable)
        self.total, self.desc, self.unit, self.n = total, desc, unit, initial
        self.file = file
        self.every_s = every_s
        self.start = self._said_at = time.monotonic()
        self._said_n = initial
        self._due = False
        self._postfix = ""
        self.closed = False

    def __iter__(self):
        for item in self.iterable:
            yield item
            self.update()
        self.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _tenth(self, n: int) -> int:
        return int(10 * n / self.total) if self.total else 0

    def update(self, n: int = 1) -> None:
        if self._due:  # no set_postfix came after the update that made it due
            self._say()
        before, self.n = self.n, self.n + n
        self._due = self._tenth(self.n) > self._tenth(before) or time.monotonic() - self._said_at >= self.every_s

    def set_postfix(self, **values) -> None:
        """The numbers shown after the count; a line that is due waits for them."""
        self._postfix = ", ".join(f"{k}={v}" for k, v in values.items())
        if self._due:
            self._say()

    def write(self, text: str, file=None) -> None:
        """A message line, written where tqdm.write writes it (stdout unless `file`)."""
        print(text, file=sys.stdout if file is None else file, flush=True)

    def line(self) -> str:
        count = f"{self.n}/{self.total} {self.unit} ({100 * self.n / self.total:.0f}%)" if self.total else f"{self.n} {self.unit}"
        parts = [f"{self.desc}: {count}" if self.desc else count, f"{time.monotonic() - self.start:.0f}s"]
        return ", ".join(parts + ([self._postfix] if self._postfix else []))

    def _say(self) -> None:
        stream = sys.stderr if self.file is None else self.file
        print(self.line(), file=stream, flush=True)
        self._said_at, self._said_n, self._due = time.monotonic(), self.n, False

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.n != self._said_n:
            self._say()
