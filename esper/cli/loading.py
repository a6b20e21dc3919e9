"""Command-line helpers: model files and shapes, with errors as one-line usage errors."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from esper.cli.main import UsageError
from esper.kasmina.hosts import HostFileError
from esper.kasmina.hosts import load_model_file as _load


def load_model_file(path: str | Path) -> tuple[nn.Module, torch.Tensor | None]:
    try:
        return _load(path)
    except HostFileError as e:
        raise UsageError(str(e)) from e


def parse_shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise UsageError(f"--input-shape must be comma-separated integers like 1,3,32,32, got {text!r}") from None
    if not shape or any(v <= 0 for v in shape):
        raise UsageError(f"--input-shape must be positive integers, got {text!r}")
    return shape
