"""HostTrainer: one instrumented model's optimizer, learning-rate schedule, training
chunks, evaluation and ablation probe.

    trainer = HostTrainer(mm, cfg, device, data, task, seed)
    loss, acc, images = trainer.train_chunk(trainer.chunk(t))  # decision t's share of an epoch, one read
    loss_sum, correct, count = trainer.train_step(x, y)      # device tensors: nothing is read back
    loss, acc = trainer.evaluate(split)                      # one read per split
    contributions = trainer.measure_contributions()          # each blending seed's accuracy, by ablation

`task` (esper.simic.tasks) scores a batch: class ids, or next tokens; loss and accuracy
are per prediction.

Every GrowthEnv owns one; the batched runner (`esper.simic.batched`) steps the seeds
of K of them and trains their stacked hosts with an optimizer of the same kind and
state, so that one and K environments follow the same arithmetic.

Under torchrun (`ranks.spread`, esper.simic.distributed) every rank walks the same batch
order; each trains its shard of every batch through DistributedDataParallel, evaluates its
shard of a split, and the sums are added over the ranks, so every rank reads the same
numbers. Batches with fewer rows than ranks are skipped.

Precision: with `cfg.precision == "bf16"` on CUDA, forward passes (host, seeds, blends,
the ablation probe) run under `torch.autocast(dtype=bfloat16)`; parameters, optimizer
state and the loss stay fp32. On the CPU the setting is ignored: autocast there is
slower than fp32 for these convolutions.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field
from itertools import islice

import torch

from esper.leyline import SeedStage
from esper.simic.distributed import (
    DataParallelHost,
    Ranks,
    collective,
    guard_on_all_ranks,
    shard,
    sum_over_ranks,
    sync_buffers,
)
from esper.simic.tasks import read_once, task_for


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
    """Trains `mm` on `data.train` (batch order drawn from `seed`), evaluates it on any
    split, and probes its seeds on the first `cfg.contribution_samples` of `data.val`."""

    def __init__(self, mm, cfg: EnvConfig, device: torch.device, data, task, seed: int, ranks: Ranks = Ranks()):
        self.mm = mm
        self.ranks = ranks
        self.model = DataParallelHost(mm, ranks)
        mm.plane.defer_culls = ranks.spread
        self.task = task
        self.cfg = cfg
        self.device = device
        self.data = data
        self.batches_per_epoch = max(1, math.ceil(len(data.train) / cfg.batch_size))
        self.optimizer = make_optimizer(list(mm.parameters()), cfg)
        mm.plane.attach_optimizer(self.optimizer, **({"lr": cfg.seed_lr} if cfg.seed_lr else {}))
        self.schedule = EpisodeSchedule(self.optimizer, cfg, self.batches_per_epoch * cfg.epochs)
        self.guard_culls: list[str] = []
        n = min(cfg.contribution_samples, len(data.val))
        self.probe = (self.place(data.val.x[:n]), data.val.y[:n].to(device))
        self.contributions: dict[str, float] = {}
        self._frozen: dict[str, float] = {}  # a fossil keeps the contribution it had when it fossilized
        self._order = torch.Generator(device=data.train.x.device).manual_seed(seed)
        self._batches: Iterator | None = None

    def chunk(self, decision: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Decision `decision`'s 1/decisions_per_epoch of the epoch's batches, on the device
        (a fresh shuffle at the start of each epoch)."""
        k = self.cfg.decisions_per_epoch
        part = decision % k
        if part == 0:
            self._batches = iter(self.data.train.batches(self.cfg.batch_size, shuffle=True, generator=self._order,
                                                         augment=self.cfg.augment))
        n = self.batches_per_epoch
        count = None if part == k - 1 else round((part + 1) * n / k) - round(part * n / k)
        self.mm.train()
        for x, y in islice(self._batches, count):
            if len(y) >= self.ranks.world_size:
                yield self.place(x), y.to(self.device, non_blocking=True)

    def train_chunk(self, batches) -> tuple[float | None, float | None, int]:
        """One optimizer step per batch; the chunk's mean loss and accuracy (None without
        batches) and its count of examples, read from the device once."""
        loss_sum, correct, count, seen = torch.zeros((), device=self.device), 0, 0, 0
        for x, y in batches:
            batch_loss, batch_correct, batch_count = self.train_step(x, y)
            loss_sum, correct, count = loss_sum + batch_loss, correct + batch_correct, count + batch_count
            seen += len(y)
        if self.ranks.spread:
            sync_buffers(self.mm, self.ranks)
            loss_sum, correct, count = sum_over_ranks(self._sums(loss_sum, correct, count), self.ranks).unbind()
        loss_sum, correct, count = read_once([loss_sum, correct, count])
        return (loss_sum / count, correct / count, seen) if count else (None, None, seen)

    def autocast(self):
        if self.cfg.precision == "bf16" and self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return nullcontext()

    def place(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, non_blocking=True)
        return x.contiguous(memory_format=torch.channels_last) if self.cfg.channels_last and x.dim() == 4 else x

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int | torch.Tensor]:
        """One optimizer step on (x, y); returns the batch's summed loss, correct count and
        count of predictions, on the device (of this rank's shard). plane.guard() culls
        seeds with non-finite gradients first."""
        self.schedule.adopt_new_groups()
        self.optimizer.zero_grad(set_to_none=True)
        model, share = self.model(), 1.0
        if self.ranks.spread:
            x, y, share = shard(x, y, self.ranks)

        def forward_backward():
            with self.autocast():  # the loss too: autocast computes cross-entropy in fp32
                score = self.task.score(model(x), y)
            (score.loss * share if self.ranks.spread else score.loss).backward()
            return score

        if self.ranks.spread:  # DDP all-reduces the gradients inside backward()
            score = collective(self.ranks, "a training step's gradient all-reduce", forward_backward, only_transport=True)
        else:
            score = forward_backward()
        self.guard_culls += guard_on_all_ranks(self.mm.plane, self.ranks)
        self.optimizer.step()
        self.schedule.step()
        return score.loss.detach() * score.count, score.correct, score.count

    @torch.no_grad()
    def evaluate(self, split) -> tuple[float, float]:
        """Loss and accuracy (a fraction) per prediction of the current model on a TensorData split."""
        was_training = self.mm.training
        self.mm.eval()
        if self.ranks.spread:
            n, r, w = len(split), self.ranks.rank, self.ranks.world_size
            split = type(split)(split.x[n * r // w : n * (r + 1) // w], split.y[n * r // w : n * (r + 1) // w])
        loss_sum, correct, seen = torch.zeros((), device=self.device, dtype=torch.float64), 0, 0
        for x, y in split.batches(self.cfg.eval_batch_size, shuffle=False):
            x, y = self.place(x), y.to(self.device, non_blocking=True)
            with self.autocast():
                score = self.task.score(self.mm(x), y)
            loss_sum, correct, seen = loss_sum + score.loss.double() * score.count, correct + score.correct, seen + score.count
        self.mm.train(was_training)
        if self.ranks.spread:
            loss_sum, correct, seen = sum_over_ranks(self._sums(loss_sum, correct, seen), self.ranks).unbind()
        loss_sum, correct, seen = read_once([loss_sum, correct, seen])
        return loss_sum / max(seen, 1), correct / max(seen, 1)

    def _sums(self, *values) -> torch.Tensor:
        return torch.stack([torch.as_tensor(v, device=self.device, dtype=torch.float64) for v in values])

    def measure_contributions(self) -> dict[str, float]:
        """Each BLENDING seed's accuracy on the probe batch minus the same with its slot
        ablated; fossils keep the value they had when they fossilized."""
        probe = lambda: probe_accuracy(self.mm, *self.probe, self.cfg.eval_batch_size)  # noqa: E731
        with self.autocast():
            self.contributions = seed_contributions(self.mm, probe, self.contributions, self._frozen)
        return self.contributions


def probe_accuracy(model, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1000) -> float:
    """Fraction of the predictions on `x` that are right (class ids or next tokens, as `y`
    says: esper.simic.tasks), in batches, without gradients."""
    task = task_for(y)
    correct = count = 0
    with torch.no_grad():
        for start in range(0, len(y), batch_size):
            score = task.score(model(x[start : start + batch_size]), y[start : start + batch_size])
            correct += int(score.correct)
            count += score.count
    return correct / max(count, 1)


def seed_contributions(
    model, score: Callable[[], float], previous: dict[str, float], frozen: dict[str, float]
) -> dict[str, float]:
    """Each BLENDING seed's contribution: `score()` (a probe's accuracy, or any number
    where higher is better) with every seed in, minus the same with that slot ablated
    (`plane.ablate`). A fossil keeps the contribution it had when it fossilized, since
    its slot is folded into the graph and can no longer be ablated: `frozen` holds those
    values across calls (updated in place) and `previous` is the last call's result.
    `model` (a MorphogeneticModel) is scored in eval mode and left in the mode it was in."""
    plane = model.plane
    blending = [i for i, s in plane.slots.items() if s.stage is SeedStage.BLENDING]
    result = {}
    if blending:
        was_training = model.training
        model.eval()
        with torch.no_grad():
            with_all = score()
            for slot_id in blending:
                with plane.ablate(slot_id):
                    result[slot_id] = with_all - score()
        model.train(was_training)
    for slot_id, slot in plane.slots.items():
        if slot.stage is SeedStage.FOSSILIZED:
            frozen.setdefault(slot_id, previous.get(slot_id, 0.0))
            result[slot_id] = frozen[slot_id]
    return result
