"""Blending algorithms: how a seed's alpha moves from 0 (host only) to 1 (seed fully in).

Each seed owns one algorithm and one schedule length `steps`, counted in plane ticks
(`plane.step()`). The blend itself is `out = h + alpha * (seed(x) - x)`, x = h detached.

    linear   alpha = t / steps
    sigmoid  alpha = (sig(k (t/steps - 1/2)) - sig(-k/2)) / (sig(k/2) - sig(-k/2)),  k = 10
    gated    alpha = (t / steps) * g(x), g a learned per-sample, per-channel gate in (0, 1)

Register your own with `@register_blend("name")` on a BlendAlgorithm subclass that
overrides `schedule(progress)`: it gets a float (telemetry) or a 0-dim float64 tensor (alpha
for the forward pass, computed on the device when the plane ticks, so that nothing is read
back from it), and returns alpha of the same kind.
A blend is causal-safe (`causal = True`) when alpha at position t reads nothing after t;
`gated` is not, since its gate pools x over the whole sequence, so a causal host refuses it.
"""

from __future__ import annotations

import math

import torch
from torch import nn

_BLENDS: dict[str, type[BlendAlgorithm]] = {}


def register_blend(name: str):
    def wrap(cls):
        cls.name = name
        _BLENDS[name] = cls
        return cls

    return wrap


def blend_names(causal: bool = False) -> list[str]:
    """Registered blends, in registration order; with `causal`, only the causal-safe ones."""
    return [name for name, cls in _BLENDS.items() if cls.causal or not causal]


def build_blend(name: str, shape: tuple[int, ...], steps: int) -> "BlendAlgorithm":
    if name not in _BLENDS:
        raise KeyError(f"unknown blend '{name}'; known: {', '.join(_BLENDS)}")
    if steps < 1:
        raise ValueError(f"a blend needs at least 1 step, got {steps}")
    return _BLENDS[name](tuple(shape), steps)


class BlendAlgorithm(nn.Module):
    """A schedule over ticks; subclasses shape alpha. State lives in buffers, so it checkpoints."""

    name = "base"
    causal = True  # a schedule alone reads no position of x

    def __init__(self, shape: tuple[int, ...], steps: int):
        super().__init__()
        self.steps = steps
        # The forward pass reads alpha from `value`, a buffer on the device computed when
        # the plane ticks: no read of the device, nothing to compute per call, and
        # torch.compile sees a tensor, not a constant to recompile for. `t` is the schedule's
        # state (it checkpoints); Python readers (telemetry, the lifecycle) use its `ticks` mirror.
        self.register_buffer("t", torch.zeros((), dtype=torch.long))
        self.register_buffer("value", torch.zeros(()), persistent=False)
        self.ticks = 0
        self._refresh()

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self.ticks = int(self.t)
        self._refresh()

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        self._refresh()  # a cast (.to(dtype), .half()) rounds alpha afresh from float64, not from the old dtype
        return self

    @property
    def progress(self) -> float:
        return min(self.ticks, self.steps) / self.steps

    @property
    def done(self) -> bool:
        return self.ticks >= self.steps

    def tick(self, ticks: int = 1) -> None:
        if not self.done:
            step = min(ticks, self.steps - self.ticks)
            self.ticks += step
            self.t += step
            self._refresh()

    def schedule(self, progress):
        """Alpha at `progress` in [0, 1]: a float for a float, a tensor for a tensor."""
        return progress

    def scheduled_alpha(self) -> float:
        return float(self.schedule(self.progress))

    def _exact(self, dtype: torch.dtype) -> torch.Tensor:
        """Alpha now, computed in float64 like the Python schedule, then rounded to `dtype`."""
        progress = self.t.clamp(max=self.steps).to(torch.float64) / self.steps
        return self.schedule(progress).to(dtype)

    def _refresh(self) -> None:
        # In place: the buffer keeps its address, which CUDA graphs record. A backward pass
        # still to come reads the value it saved, so tick between steps, as the plane says.
        with torch.no_grad():
            self.value.copy_(self._exact(self.value.dtype))

    def alpha(self, x: torch.Tensor) -> torch.Tensor:
        """Alpha for this batch: a 0-dim tensor, or one that broadcasts against x, in x's dtype."""
        if x.dtype == self.value.dtype:
            return self.value
        return self._exact(x.dtype)  # under autocast: rounded once, from float64

    def extra_repr(self) -> str:
        return f"steps={self.steps}"


@register_blend("linear")
class LinearBlend(BlendAlgorithm):
    pass


@register_blend("sigmoid")
class SigmoidBlend(BlendAlgorithm):
    sharpness = 10.0

    def schedule(self, progress):
        k = self.sharpness
        lo, hi = _sig(-k / 2), _sig(k / 2)
        s = torch.sigmoid(k * (progress - 0.5)) if isinstance(progress, torch.Tensor) else _sig(k * (progress - 0.5))
        return (s - lo) / (hi - lo)


class ChannelGate(nn.Module):
    """g(x) in (0, 1) per sample and per channel, from x pooled over space or sequence.

    Its bias starts at +2, so the gate opens at about 0.88 and may learn to close where
    the seed hurts.
    """

    def __init__(self, shape: tuple[int, ...]):
        super().__init__()
        self.rank = len(shape)
        c = shape[1] if self.rank == 4 else shape[-1]
        hidden = max(4, c // 4)
        self.mlp = nn.Sequential(nn.Linear(c, hidden), nn.ReLU(), nn.Linear(hidden, c))
        nn.init.zeros_(self.mlp[2].weight)
        nn.init.constant_(self.mlp[2].bias, 2.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.rank == 4:
            return torch.sigmoid(self.mlp(x.mean(dim=(2, 3))))[:, :, None, None]
        g = torch.sigmoid(self.mlp(x.mean(dim=tuple(range(1, x.dim() - 1)))))
        return g.reshape(g.shape[0], *([1] * (x.dim() - 2)), g.shape[-1])


@register_blend("gated")
class GatedBlend(BlendAlgorithm):
    """A learned gate scales the linear schedule; it reads the detached host activation
    and learns from the task loss through alpha."""

    causal = False

    def __init__(self, shape: tuple[int, ...], steps: int):
        super().__init__(shape, steps)
        self.gate = ChannelGate(shape)

    def alpha(self, x: torch.Tensor) -> torch.Tensor:
        return super().alpha(x) * self.gate(x).to(x.dtype)


class GatedResidual(nn.Module):
    """A fossil whose blend keeps its learned gate: x + g(x) * (seed(x) - x)."""

    def __init__(self, seed: nn.Module, gate: ChannelGate):
        super().__init__()
        self.seed = seed
        self.gate = gate

    def forward(self, x):
        return x + self.gate(x) * (self.seed(x) - x)


def _sig(v: float) -> float:
    return 1.0 / (1.0 + math.exp(-v))
