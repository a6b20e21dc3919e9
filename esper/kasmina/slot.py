"""SeedSlot: one point on the Kasmina plane, and the forward pass of each seed stage.

    DORMANT, GERMINATED, CULLED   out = h                                   (no-op)
    TRAINING                      out = h + (s - s.detach()),  s = seed(h.detach())
    BLENDING                      out = h + alpha * (s - x),   x = h.detach(), s = seed(x)
    FOSSILIZED                    out = seed(h)                (isolation lifted)

In TRAINING the output is h bit for bit and the host's gradient is exactly what it would
be without the seed, while the seed learns from the task loss. In BLENDING the host's
gradient through h stays whole (dh = g) whatever alpha is.

A call costs what its stage computes and little more: the stage's path is chosen when
the stage changes (`_PATHS`), not tested on every call; alpha is computed when the plane
ticks (`BlendAlgorithm.value`); the check that keeps a non-finite seed out of the model
is one reduction (`aminmax`) of the tensor that carries the seed into the output.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from esper import kernels
from esper.kasmina.blending import GatedBlend, GatedResidual, build_blend
from esper.kasmina.blueprints import build_blueprint
from esper.leyline import SeedStage, SlotTelemetry, check_move

S = SeedStage
STATS_EVERY = 16  # sample input statistics every N training forward passes: cheap enough to leave on


def reads_are_free(device: torch.device) -> bool:
    """Whether reading a tensor's value into Python costs no stall (no queue to drain)."""
    return device.type == "cpu"


_exporting = getattr(torch.compiler, "is_exporting", lambda: False)  # older torch has none


def _tracing() -> bool:
    return torch.compiler.is_compiling() or _exporting()


def _passthrough(slot: SeedSlot, h: torch.Tensor) -> torch.Tensor:
    return h


def _fossil(slot: SeedSlot, h: torch.Tensor) -> torch.Tensor:
    # Hooked hosts only: an fx graph calls a fossil's seed itself (graph/rewrite.fold_slot).
    return slot.seed(h)


def _isolated(slot: SeedSlot, h: torch.Tensor) -> torch.Tensor:
    if not slot.training:
        return h  # the seed is not in the output yet: nothing to compute
    s = slot.seed(h.detach()).to(h.dtype)  # under autocast a seed may answer in another dtype
    # The output is h whatever s holds, so s is what to check.
    return slot._finite_or_host(kernels.straight_through(h, s), s, h)


def _blended(slot: SeedSlot, h: torch.Tensor) -> torch.Tensor:
    x = h.detach()
    s = slot.seed(x).to(h.dtype)
    out = kernels.blend(h, s, slot.blend.alpha(x))
    # out is not finite whenever s or alpha is not (even at alpha 0: 0 * inf is NaN).
    return slot._finite_or_host(out, out, h)


# The forward pass of each stage; an ablated slot passes h through whatever its stage.
_PATHS = {
    S.DORMANT: _passthrough,
    S.GERMINATED: _passthrough,
    S.CULLED: _passthrough,
    S.TRAINING: _isolated,
    S.BLENDING: _blended,
    S.FOSSILIZED: _fossil,
}


def _extremes(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """t's least and greatest element: both finite exactly when every element is (a NaN
    propagates to both), in one reduction where isfinite(t).all() takes five kernels."""
    if t.numel() == 0:
        zero = torch.zeros((), dtype=t.dtype, device=t.device)
        return zero, zero
    return t.aminmax()


class SeedSlot(nn.Module):
    def __init__(self, slot_id: str, shape: tuple[int, ...], cooldown: int = 1):
        super().__init__()
        self.slot_id = slot_id
        self.shape = tuple(shape)
        self.cooldown = cooldown
        self.stage = S.DORMANT
        self.seed: nn.Module | None = None
        self.blend: nn.Module | None = None
        self.blueprint: str | None = None
        self.blend_name: str | None = None
        self.ticks_in_stage = 0
        self.events: list[str] = []
        self.on_auto_cull = None  # set by the plane
        self._ablated = False
        self._path = _passthrough
        self._calls = 0
        self._stats: torch.Tensor | None = None
        self._grad_norm: torch.Tensor | None = None
        self.defer_culls = False  # set by the plane: leave even a free-to-read verdict to guard()

    # ---- forward -------------------------------------------------------------------
    def forward(self, h: torch.Tensor) -> torch.Tensor:
        # Training passes only: evaluations and probes differ between loops, and the same
        # training run must show a policy the same statistics. Python counters would make
        # torch.compile recompile every call, so a compiled model samples none.
        if self.training and not _tracing():
            if self._calls % STATS_EVERY == 0:
                self._sample(h)
            self._calls += 1
        return self._path(self, h)

    @property
    def ablated(self) -> bool:
        """Forced to alpha 0 (the host's activation passes through), to measure what the seed contributes."""
        return self._ablated

    @ablated.setter
    def ablated(self, value: bool) -> None:
        self._ablated = bool(value)
        self._path = _passthrough if self._ablated else _PATHS[self.stage]

    def _finite_or_host(self, out: torch.Tensor, check: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """Keep a non-finite seed out of the model (`check` carries it into `out`). On the
        CPU the check costs one reduction and the seed is culled at once. On a GPU,
        reading it would stall the queue on every forward pass, and torch.compile cannot
        branch on it, so h replaces the output on the device and the flag waits for
        plane.guard(). torch.export, which only traces, gets the output unchecked."""
        if _exporting():
            return out
        if reads_are_free(out.device) and not self.defer_culls and not torch.compiler.is_compiling():
            if all(map(math.isfinite, _extremes(check.detach()))):
                return out
            self.cull_nonfinite("non-finite seed output")
            return h
        lo, hi = _extremes(check.detach())
        finite = (lo > -math.inf) & (hi < math.inf)
        self.output_finite.logical_and_(finite)
        return torch.where(finite, out, h)

    def _sample(self, h: torch.Tensor) -> None:
        with torch.no_grad():
            hf = h.detach().float()
            self._stats = torch.stack([hf.mean(), hf.std()]) if hf.numel() > 1 else None
        if h.requires_grad:
            h.register_hook(self._record_grad)

    def reset_statistics(self) -> None:
        """Forget sampled statistics; the next forward pass takes a fresh sample."""
        self._calls = 0
        self._stats = self._grad_norm = None

    def _record_grad(self, g: torch.Tensor) -> None:
        self._grad_norm = g.detach().float().norm()

    # ---- lifecycle (the plane calls these; it owns validation and logging) --------
    def _move(self, dst: SeedStage) -> None:
        check_move(self.slot_id, self.stage, dst)
        self.stage = dst
        self.ticks_in_stage = 0
        self._path = _passthrough if self._ablated else _PATHS[dst]

    def germinate(self, blueprint: str, blend: str, steps: int, like: torch.Tensor) -> None:
        seed = build_blueprint(blueprint, self.shape)
        mixer = build_blend(blend, self.shape, steps)
        self._move(S.GERMINATED)
        self.seed = seed.to(device=like.device, dtype=like.dtype)
        self.blend = mixer.to(device=like.device, dtype=like.dtype)
        # While the seed lives: whether every output since the last plane.guard() was finite,
        # where the forward pass leaves that verdict to it. A buffer, so that it moves with the
        # model and torch.compile updates it in place (a tensor-or-None would compile twice).
        self.register_buffer("output_finite", torch.ones((), dtype=torch.bool, device=like.device), persistent=False)
        self.blend.t = self.blend.t.long()
        self.blueprint, self.blend_name = blueprint, blend

    def enter(self, dst: SeedStage) -> None:
        """Move to TRAINING or BLENDING; the seed's modules stay as they are."""
        self._move(dst)

    def fossilize(self) -> None:
        self._move(S.FOSSILIZED)
        del self.output_finite
        if isinstance(self.blend, GatedBlend):
            self.seed = GatedResidual(self.seed, self.blend.gate)
        self.blend = None

    def cull(self) -> None:
        self._cull("culled")

    def cull_nonfinite(self, why: str) -> None:
        """Cull on the slot's own initiative; the plane logs it as an edit, so replay agrees."""
        self._cull(why)
        if self.on_auto_cull is not None:
            self.on_auto_cull(self)

    def _cull(self, why: str) -> None:
        self._move(S.CULLED)
        del self.output_finite
        self.events.append(f"{why} ({self.blueprint})")
        self.seed = None
        self.blend = None
        self.blueprint = self.blend_name = None

    def tick(self, ticks: int = 1) -> None:
        if self.stage is S.CULLED:
            cooling = max(1, self.cooldown - self.ticks_in_stage)
            if ticks < cooling:
                self.ticks_in_stage += ticks
                return
            self._move(S.DORMANT)  # the ticks after the cooldown count in DORMANT
            ticks -= cooling
        self.ticks_in_stage += ticks
        if self.stage is S.BLENDING:
            self.blend.tick(ticks)

    # ---- reading ------------------------------------------------------------------
    @property
    def alpha(self) -> float:
        if self.stage is S.FOSSILIZED:
            return 1.0
        if self.stage is S.BLENDING:
            return self.blend.scheduled_alpha()
        return 0.0

    def seed_parameters(self) -> list[nn.Parameter]:
        mods = [m for m in (self.seed, self.blend) if m is not None]
        return [p for m in mods for p in m.parameters()]

    def param_count(self) -> int:
        return sum(p.numel() for p in self.seed_parameters())

    def telemetry(self) -> SlotTelemetry:
        stats = self._stats.tolist() if self._stats is not None else (None, None)
        seed_grads = [p.grad.detach().float().norm() for p in self.seed_parameters() if p.grad is not None]
        return SlotTelemetry(
            slot=self.slot_id,
            stage=self.stage.name,
            shape=self.shape,
            ticks_in_stage=self.ticks_in_stage,
            alpha=self.alpha,
            params=self.param_count(),
            blueprint=self.blueprint,
            blend=self.blend_name,
            input_mean=stats[0],
            input_std=stats[1],
            grad_norm=float(self._grad_norm) if self._grad_norm is not None else None,
            seed_grad_norm=float(torch.stack(seed_grads).norm()) if seed_grads else None,
            events=list(self.events),
        )

    def extra_repr(self) -> str:
        return f"id={self.slot_id!r}, shape={self.shape}, stage={self.stage.name}"
