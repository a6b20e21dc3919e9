"""Observations: what a growth policy sees of one environment, and how several are batched.

The feature names below are the one place that says what each column means; the
builder (esper.simic.features) fills them and the policies read them by name.
Conventions: accuracies are fractions in [0, 1]; every feature is finite and
roughly unit-scaled; a value that may be missing comes with an "..._known" flag.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from esper.leyline.edits import Op
from esper.leyline.stages import SeedStage

# Fixed vocabulary capacities, so feature width and head sizes never depend on the
# library in use. Index i means the i-th name of the blueprint (blend) list the
# environment passes in: keep those lists append-only across a trained policy's life.
MAX_BLUEPRINTS = 16
MAX_BLENDS = 8
NUM_OPS = len(Op)

# Scales shared by the feature builder and the heuristic that reads features back.
ACC_SCALE = 10.0  # accuracy deltas and contributions: 1 percentage point -> 0.1
EPOCH_SCALE = 10.0  # epochs in stage: 10 epochs -> 1.0
PARAM_RATIO_SCALE = 100.0  # params ratio r -> log1p(100 r) / log1p(100): 1% -> 0.15, 100% -> 1
WIDTH_SCALE = 10.0  # log2(width) / 10: 1024 channels -> 1.0
GRAD_DECADES = 3.0  # grad_ratio 1.0: the seed's gradient norm is 1000x the host's
FEATURE_CLIP = 3.0  # every scaled feature lies in [-3, 3]

GLOBAL_FEATURES: tuple[str, ...] = (
    "progress",  # decision / total_decisions
    "epochs_left",  # epochs still to train / EPOCH_SCALE
    # Accuracies and losses relative to chance (when the number of classes C is known): 0
    # is guessing and 1 is perfect (a loss of 0), on any task with any number of classes.
    "train_acc",  # (acc - 1/C) / (1 - 1/C)
    "val_acc",
    "train_loss",  # loss / log C, clipped
    "val_loss",
    "classes_known",
    "train_loss_delta_1",  # relative change of the loss over the last 1 (3) decisions
    "train_loss_delta_3",
    "val_loss_delta_1",
    "val_loss_delta_3",
    "train_acc_delta_1",  # accuracy change over the last 1 (3) decisions, x ACC_SCALE
    "train_acc_delta_3",
    "val_acc_delta_1",
    "val_acc_delta_3",
    "delta_1_known",  # history is long enough for the 1-decision (3-decision) deltas
    "delta_3_known",
    # The same over the last epoch, whatever the decisions per epoch: what transfers
    # between runs that decide at different rates.
    "val_acc_per_epoch",  # x ACC_SCALE
    "train_loss_per_epoch",  # relative change
    "epoch_known",
    "generalization_gap",  # train_acc - val_acc (fractions)
    "param_ratio",  # parameters added to the host, log-scaled ratio (PARAM_RATIO_SCALE)
    "budget",  # the growth granted for free (a ratio of the host's parameters), log-scaled
    "budget_left",  # budget - added, a ratio of the host's parameters, clipped
    "active_fraction",  # slots holding a GERMINATED / TRAINING / BLENDING seed
    "fossilized_fraction",
    "dormant_fraction",
)

STAGE_FEATURES = tuple(f"stage_{s.name.lower()}" for s in SeedStage)

# What a blueprint does, read off the module it builds (esper.kasmina.blueprints
# `blueprint_profile`), so that a policy sees a blueprint it was never trained with as the
# kind of module it is rather than as an unknown index.
BLUEPRINT_PROPERTIES: tuple[str, ...] = (
    "spatial_mixing",  # a convolution wider than 1x1
    "channel_mixing",  # a dense 1x1 convolution or linear layer
    "global_mixing",  # attention
    "normalizes",  # a normalization layer
    "depthwise",  # a grouped convolution
)

SLOT_FEATURES: tuple[str, ...] = (
    *STAGE_FEATURES,  # one-hot SeedStage
    "alpha",  # blend progress 0..1
    "ticks_in_stage",  # / EPOCH_SCALE
    "depth",  # the host's forward FLOPs before this slot / all of them: early 0 .. late 1
    "rank_2",  # activation rank one-hot (rank_4 also covers higher ranks)
    "rank_3",
    "rank_4",
    "width",  # log2(channels or features) / WIDTH_SCALE
    "extent",  # log2(positions per example: H*W, or T) / WIDTH_SCALE
    "param_ratio",  # seed params relative to host params, log-scaled like the global one
    "contribution",  # val acc with the seed minus with alpha forced to 0, x ACC_SCALE
    "contribution_known",
    "grad_ratio",  # log10(seed grad norm / host grad norm) / GRAD_DECADES
    "grad_known",
    *(f"seed_{p}" for p in BLUEPRINT_PROPERTIES),  # the seed's blueprint; zeros when no seed
    *(f"blend_{i}" for i in range(MAX_BLENDS)),
)

# One row per (slot, candidate blueprint): what germinating that blueprint there would
# add. Zeros where it cannot grow (blueprint_mask False).
BLUEPRINT_FEATURES: tuple[str, ...] = (
    "param_ratio",  # its parameters / the host's, log-scaled
    "flop_ratio",  # its forward FLOPs per example / the host's, log-scaled
    "budget_use",  # its parameter ratio / budget_left, clipped (FEATURE_CLIP when nothing is left)
    "fits_budget",  # 1 when it fits in what is left of the budget
    *BLUEPRINT_PROPERTIES,
)

NUM_GLOBAL_FEATURES = len(GLOBAL_FEATURES)
NUM_SLOT_FEATURES = len(SLOT_FEATURES)
NUM_BLUEPRINT_FEATURES = len(BLUEPRINT_FEATURES)


def _check_rows(mask: Tensor, what: str) -> None:
    if mask.dtype != torch.bool:
        raise TypeError(f"{what} must be a bool tensor, got {mask.dtype}")
    if not bool(mask.any(-1).all()):
        raise ValueError(f"{what} has a fully masked row; a policy would produce NaNs from it")


@dataclass
class Observation:
    """One environment at one decision point, N slots in host order.

    `op_mask[n]` holds the ops legal in slot n (WAIT always). `blueprint_mask[n]`
    holds the blueprints that can act at slot n's activation shape; a slot where none
    can has GERMINATE removed from its op mask and a placeholder row (index 0 only), so
    that no mask row is ever empty.
    """

    global_features: Tensor  # [G] float
    slot_features: Tensor  # [N, F] float
    op_mask: Tensor  # [N, NUM_OPS] bool
    blueprint_mask: Tensor  # [N, MAX_BLUEPRINTS] bool
    blend_mask: Tensor  # [MAX_BLENDS] bool
    slot_ids: list[str]
    blueprint_features: Tensor  # [N, MAX_BLUEPRINTS, NUM_BLUEPRINT_FEATURES] float

    def __post_init__(self):
        n = len(self.slot_ids)
        if n == 0:
            raise ValueError("an observation needs at least one slot")
        expected = {
            "global_features": (NUM_GLOBAL_FEATURES,),
            "slot_features": (n, NUM_SLOT_FEATURES),
            "op_mask": (n, NUM_OPS),
            "blueprint_mask": (n, MAX_BLUEPRINTS),
            "blend_mask": (MAX_BLENDS,),
            "blueprint_features": (n, MAX_BLUEPRINTS, NUM_BLUEPRINT_FEATURES),
        }
        for name, shape in expected.items():
            got = tuple(getattr(self, name).shape)
            if got != shape:
                raise ValueError(f"{name} has shape {got}, expected {shape}")
        for name in ("global_features", "slot_features", "blueprint_features"):
            if not bool(torch.isfinite(getattr(self, name)).all()):
                raise ValueError(f"{name} holds a non-finite value")
        for name in ("op_mask", "blueprint_mask", "blend_mask"):
            _check_rows(getattr(self, name), name)
        if not bool(self.op_mask[:, int(Op.WAIT)].all()):
            raise ValueError("WAIT must be legal in every slot")

    @property
    def num_slots(self) -> int:
        return len(self.slot_ids)

    def global_feature(self, name: str) -> float:
        return float(self.global_features[GLOBAL_FEATURES.index(name)])

    def slot_feature(self, name: str) -> Tensor:
        """Column `name` of the slot features, one value per slot."""
        return self.slot_features[:, SLOT_FEATURES.index(name)]

    def stages(self) -> list[SeedStage]:
        """Each slot's stage, decoded from the stage one-hot."""
        start = SLOT_FEATURES.index(STAGE_FEATURES[0])
        one_hot = self.slot_features[:, start : start + len(STAGE_FEATURES)]
        return [SeedStage(int(i)) for i in one_hot.argmax(-1)]


@dataclass
class ObservationBatch:
    """B observations padded to the largest slot count N; padded slots have
    `slot_valid` False and masks that allow only the first choice."""

    global_features: Tensor  # [B, G]
    slot_features: Tensor  # [B, N, F]
    slot_valid: Tensor  # [B, N] bool
    op_mask: Tensor  # [B, N, NUM_OPS] bool
    blueprint_mask: Tensor  # [B, N, MAX_BLUEPRINTS] bool
    blend_mask: Tensor  # [B, MAX_BLENDS] bool
    slot_ids: list[list[str]]
    blueprint_features: Tensor  # [B, N, MAX_BLUEPRINTS, NUM_BLUEPRINT_FEATURES]

    @property
    def size(self) -> int:
        return self.global_features.shape[0]

    @property
    def num_slots(self) -> int:
        return self.slot_features.shape[1]

    def to(self, device: torch.device | str) -> "ObservationBatch":
        return ObservationBatch(
            self.global_features.to(device),
            self.slot_features.to(device),
            self.slot_valid.to(device),
            self.op_mask.to(device),
            self.blueprint_mask.to(device),
            self.blend_mask.to(device),
            self.slot_ids,
            self.blueprint_features.to(device),
        )


def _first_only(*shape: int) -> Tensor:
    mask = torch.zeros(*shape, dtype=torch.bool)
    mask[..., 0] = True
    return mask


def batch_observations(observations: list[Observation]) -> ObservationBatch:
    """Stack observations, padding slots to the largest N in the list."""
    if not observations:
        raise ValueError("cannot batch an empty list of observations")
    b, n = len(observations), max(o.num_slots for o in observations)
    slot_features = torch.zeros(b, n, NUM_SLOT_FEATURES)
    slot_valid = torch.zeros(b, n, dtype=torch.bool)
    op_mask = _first_only(b, n, NUM_OPS)  # WAIT only
    blueprint_mask = _first_only(b, n, MAX_BLUEPRINTS)
    blueprint_features = torch.zeros(b, n, MAX_BLUEPRINTS, NUM_BLUEPRINT_FEATURES)
    for i, o in enumerate(observations):
        k = o.num_slots
        slot_features[i, :k] = o.slot_features
        slot_valid[i, :k] = True
        op_mask[i, :k] = o.op_mask
        blueprint_mask[i, :k] = o.blueprint_mask
        blueprint_features[i, :k] = o.blueprint_features
    return ObservationBatch(
        global_features=torch.stack([o.global_features for o in observations]).float(),
        slot_features=slot_features,
        slot_valid=slot_valid,
        op_mask=op_mask,
        blueprint_mask=blueprint_mask,
        blend_mask=torch.stack([o.blend_mask for o in observations]),
        slot_ids=[list(o.slot_ids) for o in observations],
        blueprint_features=blueprint_features,
    )
