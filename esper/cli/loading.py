"""Command-line helpers: example inputs from --input-shape, with errors as one-line usage errors."""

from __future__ import annotations

import math
import os

import torch

from esper.leyline import UsageError


def _parse_shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise UsageError(f"--input-shape must be comma-separated integers like 1,3,32,32, got {text!r}") from None
    if not shape or any(v <= 0 for v in shape):
        raise UsageError(f"--input-shape must be positive integers, got {text!r}")
    return shape


def example_input(text: str) -> torch.Tensor:
    """A random float input of the --input-shape `text`, refused when it cannot fit in memory."""
    shape = _parse_shape(text)
    size = math.prod(shape) * 4
    memory = _physical_memory()
    if size > memory:
        raise UsageError(
            f"--input-shape {text}: out of memory: the input alone takes {size / 1e9:,.1f} GB and this machine has {memory / 1e9:,.1f} GB"
        )
    try:
        return torch.randn(shape)
    except (RuntimeError, MemoryError) as e:
        raise UsageError(f"--input-shape {text}: out of memory: {str(e).splitlines()[0]}") from None


def _physical_memory() -> float:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # no sysconf (Windows): let the allocation say it
        return math.inf
