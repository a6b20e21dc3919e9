"""Files of a run directory: their names, the one atomic write every saved file goes
through, and the check that a new run overwrites nothing."""

from __future__ import annotations

import os
from pathlib import Path
from typing import BinaryIO, Callable

import torch

from esper.leyline import RunError

CHECKPOINT = "checkpoint.pt"
POLICY = "tamiyo.pt"
CONFIG = "config.yaml"


def write_atomic(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """`write(file)` into a temporary file beside `path`, fsync, then rename it over `path`:
    a crash or a concurrent reader sees the old file or the new one, never half of one."""
    # The process id keeps two writers of one path (two runs filling one dataset cache) apart.
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def save_atomic(obj, path: Path) -> None:
    """torch.save through `write_atomic`."""
    write_atomic(path, lambda f: torch.save(obj, f))


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
