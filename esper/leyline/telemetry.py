"""Per-slot telemetry records: plain data Tamiyo and reports can read."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class SlotTelemetry:
    """What one slot reports. Statistics are of the slot's input activation, sampled
    every few forward passes; None until a sample exists."""

    slot: str
    stage: str  # a SeedStage name
    shape: tuple[int, ...]  # activation shape, batch first
    ticks_in_stage: int  # plane ticks spent in the current stage
    alpha: float  # blend progress, 0 (host only) .. 1 (seed fully in)
    params: int  # parameters the seed adds
    blueprint: str | None = None
    blend: str | None = None
    input_mean: float | None = None
    input_std: float | None = None
    grad_norm: float | None = None  # gradient norm at the slot's input (host side)
    seed_grad_norm: float | None = None  # gradient norm of the seed's parameters
    events: list[str] = field(default_factory=list)  # e.g. "culled: non-finite output"

    def to_dict(self) -> dict:
        d = asdict(self)
        d["shape"] = list(self.shape)
        return d
