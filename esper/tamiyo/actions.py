"""Factored actions: the four heads, their autoregressive masks, and the conversion to Edits.

An action is (op, slot, blueprint, blend), chosen in that order. Each head's mask
depends on the choices before it:

    op         ops legal in at least one valid slot (WAIT always)
    slot       valid slots where the chosen op is legal; WAIT: slot 0, forced
    blueprint  GERMINATE: blueprints applicable at the chosen slot; else index 0, forced
    blend      GERMINATE: the available blends; else index 0, forced

A forced head has one choice, so its log-prob and entropy are 0 and it carries no
gradient. Every policy (network, heuristic, random) uses these same masks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Protocol

import torch
from torch import Tensor

from esper.leyline import Edit, Observation, ObservationBatch, Op

HEADS = ("op", "slot", "blueprint", "blend")


class Action(NamedTuple):
    """One environment's choice, as indices: slot into the observation's slot_ids,
    blueprint and blend into the policy's name lists."""

    op: int
    slot: int = 0
    blueprint: int = 0
    blend: int = 0


@dataclass
class ActionMasks:
    """Every head's mask as used when the action was chosen; stored for the update."""

    op: Tensor  # [B, NUM_OPS] bool
    slot: Tensor  # [B, N] bool
    blueprint: Tensor  # [B, MAX_BLUEPRINTS] bool
    blend: Tensor  # [B, MAX_BLENDS] bool

    def __getitem__(self, head: str) -> Tensor:
        return getattr(self, head)


def check_mask(mask: Tensor, head: str) -> None:
    """Raise unless every row allows at least one choice (a fully masked row makes NaNs)."""
    if not bool(mask.any(-1).all()):
        rows = (~mask.any(-1)).nonzero().flatten().tolist()
        raise ValueError(f"{head} mask is fully masked in rows {rows}")


def _forced(rows: int, width: int, device: torch.device) -> Tensor:
    mask = torch.zeros(rows, width, dtype=torch.bool, device=device)
    mask[:, 0] = True
    return mask


def op_choices(batch: ObservationBatch) -> Tensor:
    legal = batch.op_mask & batch.slot_valid.unsqueeze(-1)
    return legal.any(dim=1)


def slot_choices(batch: ObservationBatch, op: Tensor) -> Tensor:
    rows = torch.arange(batch.size, device=op.device)
    legal = batch.op_mask[rows, :, op] & batch.slot_valid
    wait = (op == Op.WAIT).unsqueeze(-1)
    return torch.where(wait, _forced(batch.size, batch.num_slots, op.device), legal)


def blueprint_choices(batch: ObservationBatch, op: Tensor, slot: Tensor) -> Tensor:
    rows = torch.arange(batch.size, device=op.device)
    germinate = (op == Op.GERMINATE).unsqueeze(-1)
    applicable = batch.blueprint_mask[rows, slot]
    return torch.where(germinate, applicable, _forced(batch.size, applicable.shape[-1], op.device))


def blend_choices(batch: ObservationBatch, op: Tensor) -> Tensor:
    germinate = (op == Op.GERMINATE).unsqueeze(-1)
    return torch.where(germinate, batch.blend_mask, _forced(batch.size, batch.blend_mask.shape[-1], op.device))


def masks_for(batch: ObservationBatch, actions: Tensor) -> ActionMasks:
    """The masks that applied to given actions [B, 4] (e.g. a teacher's, for imitation)."""
    op, slot = actions[:, 0], actions[:, 1]
    return ActionMasks(
        op=op_choices(batch),
        slot=slot_choices(batch, op),
        blueprint=blueprint_choices(batch, op, slot),
        blend=blend_choices(batch, op),
    )


def check_legal(masks: ActionMasks, actions: Tensor, who: str) -> None:
    """Raise unless each head's choice in `actions` [B, 4] is allowed by its mask."""
    for i, head in enumerate(HEADS):
        legal = masks[head].gather(-1, actions[:, i : i + 1]).squeeze(-1)
        if not bool(legal.all()):
            raise ValueError(f"{who} {head} choices are illegal in rows {(~legal).nonzero().flatten().tolist()}")


class Policy(Protocol):
    """What the training loop and evaluation need from any growth policy: one Edit
    per environment, observations[i] being environment i."""

    def decide(self, observations: list[Observation]) -> list[Edit]: ...
