"""Training compute: the FLOPs of every training step, measured once per model structure.

    meter = FlopMeter(mm, task, autocast, device)
    flops = meter(x, y)           # one training step on the batch (x, y), the model as it is now
    meter.host_per_image          # the host alone (no seed, no fossil): FLOPs per training example

`torch.utils.flop_counter.FlopCounterMode` counts one forward and one backward pass of
the training loss (no optimizer step). Like the usual accounts of training compute, it
counts matrix multiplications (attention's included) and convolutions, two FLOPs per
multiply-add, and leaves out elementwise work (activations, normalizations, the blend's
mixing) and the optimizer step.

What a step costs depends only on the model's structure: each slot's stage, blueprint
and blend, and the batch's shape (alpha changes nothing that is counted). So each
structure is measured once, on a copy of the model, and cached: one extra forward and
backward pass per structure, a handful per episode, and one of the host alone. The copy
keeps the measurement off the real model: its parameters, gradients, buffers (BatchNorm's
running statistics) and slot statistics are untouched, and the random stream is forked
around the pass, so a run trains the same with or without counting.

A slot costs what its stage computes while training: nothing when DORMANT, GERMINATED or
CULLED; its seed's forward and backward (the seed's own weights only: its input is
detached) when TRAINING; the same and the blend when BLENDING; and once FOSSILIZED the
seed is part of the model, the host's gradient flowing through it.

Under torchrun each rank trains a shard of every batch, so the measurement runs on a
shard-sized slice of the global batch, scaled up to the global batch's rows (the counted
operations grow linearly with the rows), so every rank reads the whole run's FLOPs.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from esper.graph import eval_mode


def structure(mm, x: torch.Tensor, y: torch.Tensor) -> tuple:
    """What a training step's FLOPs depend on: every slot's stage, blueprint and blend, and the batch's shapes."""
    slots = tuple((slot_id, s.stage, s.blueprint, s.blend_name) for slot_id, s in mm.plane.slots.items())
    return slots, tuple(x.shape), tuple(y.shape)


def step_flops(model: torch.nn.Module, task, x: torch.Tensor, y: torch.Tensor, autocast: AbstractContextManager) -> int:
    """FLOPs of `model`'s forward pass and the backward pass of its loss on (x, y)."""
    with FlopCounterMode(display=False) as counter:
        with autocast:
            loss = task.score(model(x), y).loss
        loss.backward()
    return counter.get_total_flops()


class FlopMeter:
    """The FLOPs of a training step of `mm` (a MorphogeneticModel, in training mode), cached
    per `structure`. `task` scores a batch (esper.simic.tasks); `autocast()` is the
    precision the training runs under; `world_size` ranks share each batch."""

    def __init__(self, mm, task, autocast: Callable[[], AbstractContextManager], device: torch.device, world_size: int = 1):
        self.mm = mm
        self.task = task
        self.autocast = autocast
        self.devices = [device.index or 0] if device.type == "cuda" else []
        self.world_size = world_size
        self.host_per_image: float | None = None
        self._cache: dict[tuple, int] = {}

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> int:
        key = structure(self.mm, x, y)
        if key not in self._cache:
            self._cache[key] = self._measure(x, y)
        return self._cache[key]

    def _measure(self, x: torch.Tensor, y: torch.Tensor) -> int:
        total = len(y)
        rows = math.ceil(total / self.world_size)
        x, y = x[:rows], y[:rows]
        # The copy's parameters share the real ones' storage (nothing trains them: no
        # optimizer step) and gather their own gradients, so a large model is not held
        # twice; buffers and slot statistics are copied, since a training pass updates them.
        shared = {id(p): nn.Parameter(p.detach(), p.requires_grad) for p in self.mm.parameters()}
        model = copy.deepcopy(self.mm, shared)
        with torch.random.fork_rng(devices=self.devices), torch.enable_grad():
            if self.host_per_image is None:
                self.host_per_image = step_flops(model.host, self.task, x, y, self.autocast()) / rows
            return step_flops(model, self.task, x, y, self.autocast()) * total // rows


@dataclass(frozen=True)
class HostProfile:
    """Where a host's forward compute lies: its FLOPs per example, and for each slot the
    share of them computed before it (its depth by compute, which moves less than its index
    between hosts of different shapes); and the width of its output's last dimension (a
    classifier's classes, a language model's vocabulary), read off its logits."""

    flops: int
    depth: dict[str, float]
    outputs: int | None = None


def host_profile(mm) -> HostProfile | None:
    """The profile of `mm` as it is now, measured on its example inputs (None without them)."""
    if not mm.example_inputs:
        return None
    before: dict[str, int] = {}
    with FlopCounterMode(display=False) as counter:

        def mark(slot_id):
            def hook(module, args) -> None:  # returning a value would replace the slot's input
                before.setdefault(slot_id, counter.get_total_flops())

            return hook

        hooks = [slot.register_forward_pre_hook(mark(slot_id)) for slot_id, slot in mm.plane.slots.items()]
        try:
            with eval_mode(mm), torch.no_grad(), torch.random.fork_rng(devices=[]):
                out = mm(*mm.example_inputs)
        finally:
            for hook in hooks:
                hook.remove()
    total = counter.get_total_flops()
    rows = mm.example_inputs[0].shape[0]
    out = getattr(out, "logits", out)  # a HuggingFace model's output holds its logits
    if isinstance(out, (tuple, list)) and out:
        out = out[0]
    outputs = out.shape[-1] if isinstance(out, torch.Tensor) and out.dim() >= 2 else None
    return HostProfile(total // rows, {slot: before.get(slot, 0) / max(total, 1) for slot in mm.plane.slots}, outputs)
