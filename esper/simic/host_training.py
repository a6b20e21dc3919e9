"""HostTrainer: one instrumented model's optimizer, learning-rate schedule, training steps and evaluation.

    trainer = HostTrainer(mm, cfg, device, batches_per_epoch, task)
    loss_sum, correct, count = trainer.train_step(x, y)   # device tensors: nothing is read back
    loss, acc = trainer.evaluate(split)                   # one read per split

`task` (esper.simic.tasks) scores a batch: class ids, or next tokens; loss and accuracy
are per prediction.

Every GrowthEnv owns one; the batched runner (`esper.simic.batched`) steps the seeds
of K of them and trains their stacked hosts with an optimizer of the same kind and
state, so that one and K environments follow the same arithmetic.

Precision: with `cfg.precision == "bf16"` on CUDA, forward passes (host, seeds, blends,
the ablation probe) run under `torch.autocast(dtype=bfloat16)`; parameters, optimizer
state and the loss stay fp32. On the CPU the setting is ignored: autocast there is
slower than fp32 for these convolutions.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch

from esper.simic.tasks import read_once


@dataclass
class EnvConfig:
    """How one episode trains its host."""

    epochs: int = 8
    decisions_per_epoch: int = 1
    batch_size: int = 128
    eval_batch_size: int = 1000
    optimizer: str = "adamw"  # "adamw", or "sgd" (momentum, nesterov: try lr 0.05, weight_decay 5e-4)
    lr: float = 2e-3
    lr_schedule: str = "cosine"  # decay over the episode down to lr_floor x lr; or "constant"
    lr_floor: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 0.01
    seed_lr: float | None = None  # learning rate of seed parameter groups; None: lr
    blend_steps: int = 2  # ticks a germinated seed takes to blend in (the policy's Edit.steps)
    max_slots: int | None = None
    contribution_samples: int = 512  # the fixed validation batch for ablations
    augment: bool = False
    # NHWC activations: convolutions on CPU run about twice as fast in this layout.
    channels_last: bool = False
    precision: str = "fp32"  # or "bf16": autocast on CUDA (see the module docstring)
    # slot -> blueprint: seeds fossilized before the first step, so the episode trains a
    # static bigger model from scratch (the reference that growth is judged against).
    fossils: dict[str, str] = field(default_factory=dict)

    def __post_init__(self):
        if self.epochs < 1 or self.decisions_per_epoch < 1 or self.batch_size < 1 or self.blend_steps < 1:
            raise ValueError("epochs, decisions_per_epoch, batch_size and blend_steps must be at least 1")
        if self.optimizer not in ("sgd", "adamw"):
            raise ValueError(f"optimizer must be 'sgd' or 'adamw', got {self.optimizer!r}")
        if self.lr <= 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if self.lr_schedule not in ("constant", "cosine") or not 0 <= self.lr_floor <= 1:
            raise ValueError(f"lr_schedule must be 'constant' or 'cosine' and lr_floor in [0, 1], got {self.lr_schedule!r}, {self.lr_floor}")
        if self.precision not in ("fp32", "bf16"):
            raise ValueError(f"precision must be 'fp32' or 'bf16', got {self.precision!r}")

    @property
    def decisions(self) -> int:
        return self.epochs * self.decisions_per_epoch


def make_optimizer(params, cfg: EnvConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0, weight_decay=cfg.weight_decay)


def lr_factor(cfg: EnvConfig, progress: float) -> float:
    """The schedule's multiplier at `progress` (0 to 1) through the episode:

        cosine:   floor + (1 - floor) * (1 + cos(pi * progress)) / 2
        constant: 1
    """
    if cfg.lr_schedule == "constant":
        return 1.0
    return cfg.lr_floor + (1 - cfg.lr_floor) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


class EpisodeSchedule(torch.optim.lr_scheduler.LRScheduler):
    """`lr_factor` over the episode's optimizer steps, for every parameter group, those
    that seeds add after the schedule was made included: each decays from the rate it
    joined with (its `initial_lr`, torch's own key). Step it after each optimizer step."""

    def __init__(self, optimizer: torch.optim.Optimizer, cfg: EnvConfig, total_steps: int):
        self.cfg, self.total_steps = cfg, total_steps
        super().__init__(optimizer)

    def get_lr(self) -> list[float]:
        factor = lr_factor(self.cfg, self.last_epoch / self.total_steps)
        return [group.setdefault("initial_lr", group["lr"]) * factor for group in self.optimizer.param_groups]

    def adopt_new_groups(self) -> None:
        """Give groups added since the last step (germinated seeds) the current point of
        the schedule, before the optimizer uses them."""
        factor = lr_factor(self.cfg, self.last_epoch / self.total_steps)
        for group in self.optimizer.param_groups:
            if "initial_lr" not in group:
                group["initial_lr"] = group["lr"]
                group["lr"] = group["initial_lr"] * factor


class HostTrainer:
    def __init__(self, mm, cfg: EnvConfig, device: torch.device, batches_per_epoch: int, task):
        self.mm = mm
        self.task = task
        self.cfg = cfg
        self.device = device
        self.optimizer = make_optimizer(list(mm.parameters()), cfg)
        mm.plane.attach_optimizer(self.optimizer, **({"lr": cfg.seed_lr} if cfg.seed_lr else {}))
        self.schedule = EpisodeSchedule(self.optimizer, cfg, batches_per_epoch * cfg.epochs)
        self.guard_culls: list[str] = []

    def autocast(self):
        if self.cfg.precision == "bf16" and self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return nullcontext()

    def place(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, non_blocking=True)
        return x.contiguous(memory_format=torch.channels_last) if self.cfg.channels_last and x.dim() == 4 else x

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int | torch.Tensor]:
        """One optimizer step on (x, y); returns the batch's summed loss, correct count and
        count of predictions, on the device. plane.guard() culls seeds with non-finite
        gradients first."""
        self.schedule.adopt_new_groups()
        self.optimizer.zero_grad(set_to_none=True)
        with self.autocast():  # the loss too: autocast computes cross-entropy in fp32
            score = self.task.score(self.mm(x), y)
        score.loss.backward()
        self.guard_culls += self.mm.plane.guard()
        self.optimizer.step()
        self.schedule.step()
        return score.loss.detach() * score.count, score.correct, score.count

    @torch.no_grad()
    def evaluate(self, split) -> tuple[float, float]:
        """Loss and accuracy (a fraction) per prediction of the current model on a TensorData split."""
        was_training = self.mm.training
        self.mm.eval()
        loss_sum, correct, seen = torch.zeros((), device=self.device, dtype=torch.float64), 0, 0
        for x, y in split.batches(self.cfg.eval_batch_size, shuffle=False):
            x, y = self.place(x), y.to(self.device, non_blocking=True)
            with self.autocast():
                score = self.task.score(self.mm(x), y)
            loss_sum, correct, seen = loss_sum + score.loss.double() * score.count, correct + score.correct, seen + score.count
        self.mm.train(was_training)
        loss_sum, correct, seen = read_once([loss_sum, correct, seen])
        return loss_sum / max(seen, 1), correct / max(seen, 1)
