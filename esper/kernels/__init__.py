"""Fused blend kernels (Triton) beside their PyTorch references.

``blend`` and ``straight_through`` pick the Triton op or the reference per call,
following one process-wide switch:

- ``"auto"`` (default): Triton when it is importable and the tensors are on CUDA.
- ``"triton"``: always the Triton op; CPU tensors need ``TRITON_INTERPRET=1``
  set before triton is imported.
- ``"reference"``: always the plain-torch reference.

The switch starts from ``$ESPER_KERNELS`` and changes with ``set_backend`` or,
scoped, ``with backend("reference"): ...``. Inputs the kernel does not cover
(float64, alpha layouts needing more than three index groups) use the reference
under every setting.
"""

import contextlib
import os
from collections.abc import Iterator

import torch

from .blend import HAS_TRITON, blend_reference, straight_through_reference, supports

__all__ = [
    "HAS_TRITON",
    "backend",
    "blend",
    "blend_reference",
    "get_backend",
    "set_backend",
    "straight_through",
    "straight_through_reference",
]

_BACKENDS = ("auto", "triton", "reference")


def _checked(name: str, source: str) -> str:
    if name not in _BACKENDS:
        raise ValueError(f"{source}: unknown kernel backend {name!r}; expected one of {_BACKENDS}")
    return name


_backend = _checked(os.environ.get("ESPER_KERNELS", "auto"), "ESPER_KERNELS")


def set_backend(name: str) -> None:
    """Select "auto", "triton" or "reference" for every later call."""
    global _backend
    _backend = _checked(name, "set_backend")


def get_backend() -> str:
    return _backend


@contextlib.contextmanager
def backend(name: str) -> Iterator[None]:
    """Use backend ``name`` inside the block, restoring the previous one after."""
    previous = _backend
    set_backend(name)
    try:
        yield
    finally:
        set_backend(previous)


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


def _use_triton(t: torch.Tensor) -> bool:
    if _backend == "reference":
        return False
    if _backend == "auto":
        return HAS_TRITON and t.is_cuda
    if not HAS_TRITON:
        raise RuntimeError("kernel backend 'triton' needs the triton package (pip install 'esper[triton]')")
    if not t.is_cuda and not _interpreting():
        raise RuntimeError(
            "kernel backend 'triton' got CPU tensors; that only runs under TRITON_INTERPRET=1, "
            "set before triton is imported. Use backend 'auto' or 'reference' on CPU."
        )
    return True


def _broadcasts_to(shape: torch.Size, target: torch.Size) -> bool:
    # torch.broadcast_shapes says the same at ~30x the cost: it runs per blend, per step.
    return len(shape) <= len(target) and all(n == 1 or n == m for n, m in zip(reversed(shape), reversed(target)))


def blend(h: torch.Tensor, s: torch.Tensor, alpha: torch.Tensor | float) -> torch.Tensor:
    """``h + alpha * (s - h)`` with gradients dh = g, ds = alpha * g, dalpha = sum g * (s - h).

    ``s`` matches ``h`` in shape and dtype; ``alpha`` broadcasts to ``h`` without
    growing it (0-dim, per sample, per channel, ...). The result has h's dtype;
    the arithmetic runs in fp32.
    """
    if s.shape != h.shape or s.dtype != h.dtype:
        raise ValueError(f"blend: s {tuple(s.shape)} {s.dtype} must match h {tuple(h.shape)} {h.dtype}")
    if not isinstance(alpha, torch.Tensor):
        alpha = torch.tensor(float(alpha), device=h.device)
    elif alpha.dim() == 0 and alpha.device != h.device:
        alpha = alpha.to(h.device)  # a CPU scalar is a common schedule value
    if not _broadcasts_to(alpha.shape, h.shape):
        raise ValueError(f"blend: alpha {tuple(alpha.shape)} must broadcast to h {tuple(h.shape)}")
    if _use_triton(h) and supports(h, alpha):
        return torch.ops.esper.blend(h, s, alpha)
    return blend_reference(h, s, alpha)


def straight_through(h: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """Exactly ``h`` in value, gradient ``g`` to both ``h`` and ``s``.

    The op path copies ``h`` whatever ``s`` holds; the reference is exact only
    for finite ``s`` (an inf or NaN there turns the output NaN).
    """
    if s.shape != h.shape or s.dtype != h.dtype:
        raise ValueError(f"straight_through: s {tuple(s.shape)} {s.dtype} must match h {tuple(h.shape)} {h.dtype}")
    if _use_triton(h):
        return torch.ops.esper.straight_through(h, s)
    return straight_through_reference(h, s)
