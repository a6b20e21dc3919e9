"""Features: turn raw training signals and slot telemetry into the Observation a policy sees.

Column meanings and scales are defined once, in esper.leyline.observations
(GLOBAL_FEATURES, SLOT_FEATURES); this module only computes them. Missing or
non-finite inputs become 0 with their "..._known" flag at 0, except a non-finite
loss, which reads as the largest loss (a diverged run should look bad, not unknown).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection
from dataclasses import dataclass, field

import torch

from esper.kasmina.blueprints import blueprint_profile
from esper.leyline import (
    ACTIVE_STAGES,
    BLUEPRINT_FEATURES,
    BLUEPRINT_PROPERTIES,
    GLOBAL_FEATURES,
    MAX_BLENDS,
    MAX_BLUEPRINTS,
    NUM_BLUEPRINT_FEATURES,
    NUM_OPS,
    SLOT_FEATURES,
    Observation,
    Op,
    SeedStage,
    SlotTelemetry,
    legal_ops,
)
from esper.leyline.observations import (
    ACC_SCALE,
    EPOCH_SCALE,
    FEATURE_CLIP,
    GRAD_DECADES,
    PARAM_RATIO_SCALE,
    STAGE_FEATURES,
    WIDTH_SCALE,
)
from esper.simic.flops import HostProfile


@dataclass(kw_only=True)
class TrainingSignals:
    """The host's training state at one decision point. Accuracies are fractions in
    [0, 1]; each history lists the values at earlier decisions, oldest first, without the
    current one."""

    decision: int  # decisions taken so far in the episode
    total_decisions: int
    train_loss: float
    train_acc: float
    val_loss: float
    val_acc: float
    host_params: int
    total_params: int
    train_loss_history: list[float] = field(default_factory=list)
    train_acc_history: list[float] = field(default_factory=list)
    val_loss_history: list[float] = field(default_factory=list)
    val_acc_history: list[float] = field(default_factory=list)
    decisions_per_epoch: int = 1
    classes: int | None = None  # of the task (a next-token task: the vocabulary); None: unknown
    param_budget: float = 0.0  # growth granted for free, a ratio of the host's parameters

    def __post_init__(self):
        if self.total_decisions <= 0 or self.host_params <= 0 or self.decisions_per_epoch <= 0:
            raise ValueError("total_decisions, host_params and decisions_per_epoch must be positive")
        if self.classes is not None and self.classes < 2:
            raise ValueError(f"a task has at least 2 classes, got {self.classes}")
        check_accuracies(train_acc=self.train_acc, val_acc=self.val_acc)

    @property
    def added(self) -> float:
        """Parameters added to the host, as a ratio of its own."""
        return (self.total_params - self.host_params) / self.host_params


def check_accuracies(**accuracies: float | None) -> None:
    """Accuracies are fractions in [0, 1]; None and NaN (not measured) pass."""
    for name, value in accuracies.items():
        if value is not None and math.isfinite(value) and not 0.0 <= value <= 1.0:
            raise ValueError(f"{name}={value}: accuracies are fractions in [0, 1], not percentages")


def _known(x: float | None) -> bool:
    return x is not None and math.isfinite(x)


def _clip(x: float, low: float = -FEATURE_CLIP, high: float = FEATURE_CLIP) -> float:
    return min(max(x, low), high)


def _acc(acc: float) -> float:
    return acc if _known(acc) else 0.0


def _log_ratio(ratio: float) -> float:
    return _clip(math.log1p(PARAM_RATIO_SCALE * max(ratio, 0.0)) / math.log1p(PARAM_RATIO_SCALE), 0.0)


def _acc_delta(now: float, history: list[float], k: int) -> float:
    if len(history) < k or not (_known(now) and _known(history[-k])):
        return 0.0
    return _clip((now - history[-k]) * ACC_SCALE)


def _loss_delta(now: float, history: list[float], k: int) -> float:
    """Relative change, so that the feature means the same early (loss 2) and late (loss 0.1)."""
    if len(history) < k or not (_known(now) and _known(history[-k])):
        return 0.0
    return _clip((now - history[-k]) / max(abs(history[-k]), 1e-8))


def global_features(signals: TrainingSignals, stages: list[SeedStage]) -> torch.Tensor:
    s = signals
    n = len(stages)
    chance = 1.0 / s.classes if s.classes else None

    def acc(a: float) -> float:
        return _clip((a - chance) / (1.0 - chance)) if chance is not None and _known(a) else 0.0

    def loss(value: float) -> float:
        if not _known(value):
            return FEATURE_CLIP  # a diverged run reads as the worst loss, known chance or not
        return _clip(value / math.log(s.classes), 0.0) if chance is not None else 0.0

    epoch = s.decisions_per_epoch
    f = {
        "progress": _clip(s.decision / s.total_decisions, 0.0, 1.0),
        "epochs_left": _clip((s.total_decisions - s.decision) / epoch / EPOCH_SCALE, 0.0),
        "train_acc": acc(s.train_acc),
        "val_acc": acc(s.val_acc),
        "train_loss": loss(s.train_loss),
        "val_loss": loss(s.val_loss),
        "classes_known": float(chance is not None),
        "val_acc_per_epoch": _acc_delta(s.val_acc, s.val_acc_history, epoch),
        "train_loss_per_epoch": _loss_delta(s.train_loss, s.train_loss_history, epoch),
        "epoch_known": float(len(s.val_acc_history) >= epoch),
        "generalization_gap": _acc(s.train_acc) - _acc(s.val_acc),
        "param_ratio": _log_ratio(s.added),
        "budget": _log_ratio(s.param_budget),
        "budget_left": _clip(s.param_budget - s.added),
        "active_fraction": sum(st in ACTIVE_STAGES for st in stages) / n,
        "fossilized_fraction": sum(st is SeedStage.FOSSILIZED for st in stages) / n,
        "dormant_fraction": sum(st is SeedStage.DORMANT for st in stages) / n,
    }
    for k in (1, 3):
        f[f"delta_{k}_known"] = float(len(s.val_acc_history) >= k)
        f[f"train_loss_delta_{k}"] = _loss_delta(s.train_loss, s.train_loss_history, k)
        f[f"val_loss_delta_{k}"] = _loss_delta(s.val_loss, s.val_loss_history, k)
        f[f"train_acc_delta_{k}"] = _acc_delta(s.train_acc, s.train_acc_history, k)
        f[f"val_acc_delta_{k}"] = _acc_delta(s.val_acc, s.val_acc_history, k)
    return torch.tensor([f[name] for name in GLOBAL_FEATURES], dtype=torch.float32)


def _properties(profile) -> dict[str, float]:
    return {p: float(getattr(profile, p)) for p in BLUEPRINT_PROPERTIES}


def _index(name: str | None, names: list[str], what: str) -> int | None:
    if name is None:
        return None
    if name not in names:
        raise ValueError(f"{what} '{name}' is not in the policy's list {names}")
    return names.index(name)


def slot_features(
    t: SlotTelemetry,
    depth: float,
    host_params: int,
    contribution: float | None,
    blends: list[str],
) -> torch.Tensor:
    """One slot's row; `depth` is its place in the host by compute, 0 (first) .. 1 (last)."""
    stage = SeedStage[t.stage]
    rank = len(t.shape)
    width = t.shape[1] if rank >= 4 else t.shape[-1]
    extent = math.prod(t.shape[2:]) if rank >= 4 else (t.shape[1] if rank == 3 else 1)
    f = dict.fromkeys(SLOT_FEATURES, 0.0)
    f[STAGE_FEATURES[stage]] = 1.0
    f["alpha"] = _clip(t.alpha, 0.0, 1.0) if _known(t.alpha) else 0.0
    f["ticks_in_stage"] = _clip(t.ticks_in_stage / EPOCH_SCALE, 0.0)
    f["depth"] = _clip(depth, 0.0, 1.0)
    f["rank_2" if rank <= 2 else "rank_3" if rank == 3 else "rank_4"] = 1.0
    f["width"] = _clip(math.log2(max(width, 1)) / WIDTH_SCALE, 0.0)
    f["extent"] = _clip(math.log2(max(extent, 1)) / WIDTH_SCALE, 0.0)
    f["param_ratio"] = _log_ratio(t.params / host_params)
    if _known(contribution):
        f["contribution"] = _clip(contribution * ACC_SCALE)
        f["contribution_known"] = 1.0
    if _known(t.grad_norm) and _known(t.seed_grad_norm) and t.grad_norm > 0 and t.seed_grad_norm >= 0:
        ratio = (t.seed_grad_norm + 1e-12) / t.grad_norm
        f["grad_ratio"] = _clip(math.log10(ratio) / GRAD_DECADES)
        f["grad_known"] = 1.0
    if t.blueprint is not None:
        f.update({f"seed_{p}": v for p, v in _properties(blueprint_profile(t.blueprint, tuple(t.shape))).items()})
    blend = _index(t.blend, blends, "blend")
    if blend is not None:
        f[f"blend_{blend}"] = 1.0
    return torch.tensor([f[name] for name in SLOT_FEATURES], dtype=torch.float32)


def blueprint_features(
    shape: tuple[int, ...], blueprints: list[str], fits: Collection[str], signals: TrainingSignals, host_flops: int | None
) -> torch.Tensor:
    """[MAX_BLUEPRINTS, NUM_BLUEPRINT_FEATURES]: for each blueprint that fits a slot of
    `shape`, what growing it there would add, against the host and the budget left.
    `host_flops` is the host's forward FLOPs per example (None: unknown, flop_ratio 0)."""
    rows = torch.zeros(MAX_BLUEPRINTS, NUM_BLUEPRINT_FEATURES)
    left = signals.param_budget - signals.added
    for j, name in enumerate(blueprints):
        if name not in fits:
            continue
        profile = blueprint_profile(name, tuple(shape))
        ratio = profile.params / signals.host_params
        f = {
            "param_ratio": _log_ratio(ratio),
            "flop_ratio": _log_ratio(profile.flops / host_flops) if host_flops else 0.0,
            "budget_use": _clip(ratio / left, 0.0) if left > 0 else FEATURE_CLIP,
            "fits_budget": float(ratio <= left),
            **_properties(profile),
        }
        rows[j] = torch.tensor([f[name] for name in BLUEPRINT_FEATURES])
    return rows


def action_masks(
    stages: list[SeedStage],
    fitting: list[Collection[str]],
    blueprints: list[str],
    blends: list[str],
    usable_blends=None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(op_mask [N, NUM_OPS], blueprint_mask [N, MAX_BLUEPRINTS], blend_mask [MAX_BLENDS])
    for slots in `stages` where the blueprints in `fitting` may grow: the ops the lifecycle
    allows, those of `blueprints` (GERMINATE masked where none fits), the usable blends."""
    n = len(stages)
    op_mask = torch.zeros(n, NUM_OPS, dtype=torch.bool)
    blueprint_mask = torch.zeros(n, MAX_BLUEPRINTS, dtype=torch.bool)
    for i, (stage, fits) in enumerate(zip(stages, fitting)):
        for j, name in enumerate(blueprints):
            blueprint_mask[i, j] = name in fits
        op_mask[i, [int(op) for op in legal_ops(stage)]] = True
        if not blueprint_mask[i].any():
            op_mask[i, Op.GERMINATE] = False
            blueprint_mask[i, 0] = True  # placeholder, never used: GERMINATE is masked here
    blend_mask = torch.zeros(MAX_BLENDS, dtype=torch.bool)
    blend_mask[: len(blends)] = torch.tensor([usable_blends is None or b in usable_blends for b in blends])
    if not blend_mask.any():
        raise ValueError(f"none of the policy's blends {blends} may be used here (usable: {sorted(usable_blends)})")
    return op_mask, blueprint_mask, blend_mask


def build_observation(
    telemetry: list[SlotTelemetry],
    signals: TrainingSignals,
    contributions: dict[str, float],
    blueprints: list[str],
    fitting: Callable[[tuple[int, ...]], Collection[str]],
    blends: list[str],
    usable_blends: Collection[str] | None = None,
    profile: HostProfile | None = None,
) -> Observation:
    """One environment's Observation. `telemetry` lists the slots in host order;
    `contributions` maps slot -> measured contribution (missing: not measured);
    `fitting(shape)` names the blueprints that can grow at a slot of that activation shape
    and `usable_blends` the blends that may be chosen (default: all of `blends`). Those are
    `blueprints_for(shape, causal)` and `blend_names(causal)` (esper.kasmina), so the masks
    of every policy offer only seeds that can act at each slot, and on a causal host only
    causal-safe ones. `profile` (esper.simic.flops.host_profile) places each slot by the
    host's compute before it; without one, by its index."""
    if not telemetry:
        raise ValueError("the host has no seed slots")
    if not 0 < len(blueprints) <= MAX_BLUEPRINTS or not 0 < len(blends) <= MAX_BLENDS:
        raise ValueError(f"need 1..{MAX_BLUEPRINTS} blueprints and 1..{MAX_BLENDS} blends")
    n = len(telemetry)
    stages = [SeedStage[t.stage] for t in telemetry]
    depth = [profile.depth.get(t.slot, 0.0) if profile else i / max(n - 1, 1) for i, t in enumerate(telemetry)]
    rows = [slot_features(t, d, signals.host_params, contributions.get(t.slot), blends) for t, d in zip(telemetry, depth)]
    fits = [set(fitting(tuple(t.shape))) for t in telemetry]
    op_mask, blueprint_mask, blend_mask = action_masks(stages, fits, blueprints, blends, usable_blends)
    host_flops = profile.flops if profile else None
    return Observation(
        global_features=global_features(signals, stages),
        slot_features=torch.stack(rows),
        op_mask=op_mask,
        blueprint_mask=blueprint_mask,
        blend_mask=blend_mask,
        slot_ids=[t.slot for t in telemetry],
        blueprint_features=torch.stack([blueprint_features(t.shape, blueprints, f, signals, host_flops) for t, f in zip(telemetry, fits)]),
    )
