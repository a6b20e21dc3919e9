"""Files of a run directory: their names, atomic saves, and the check that a new run
overwrites nothing."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from esper.leyline import RunError

CHECKPOINT = "checkpoint.pt"
POLICY = "tamiyo.pt"
CONFIG = "config.yaml"


def save_atomic(obj, path: Path) -> None:
    """torch.save to a temporary file in the same directory, fsync, then rename over `path`."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def check_fresh_run(out: Path, resume: bool) -> None:
    """A run starts only in an empty or new directory, unless it resumes the checkpoint
    there: nothing a run did not read a checkpoint for is ever overwritten or shortened."""
    if resume and (out / CHECKPOINT).is_file():
        return
    held = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    if held:
        way = "pass --resume to continue it" if (out / CHECKPOINT).is_file() else f"it has no {CHECKPOINT} to resume from"
        shown = ", ".join(held[:4]) + (", ..." if len(held) > 4 else "")
        raise RunError(f"{out} already holds a run ({shown}): {way}, or choose another --out; nothing was changed")
