"""HostTrainer: one instrumented model's optimizer, learning-rate schedule, training
chunks, evaluation and ablation probe.

    trainer = HostTrainer(mm, cfg, device, data, task, seed)
    loss, acc, images, flops = trainer.train_chunk(trainer.chunk(t))  # decision t's share of an epoch, one read
    loss, acc = trainer.evaluate(split)                      # one read per split
    contributions = trainer.measure_contributions()          # each blending seed's accuracy, by ablation

`task` (esper.simic.tasks) scores a batch: class ids, or next tokens; loss and accuracy
are per prediction.

Every GrowthEnv owns one. `train_chunks` is the one training loop: `train_chunk` runs
it for one trainer, and the batched runner (`esper.simic.batched`) for K of them with
their hosts stacked into one vmapped model, supplying only that forward pass; the
gradient clearing, the NaN guard, the seed learning rates, the optimizer and schedule
steps and the FLOP count are the same code for both, so one and K environments follow the
same arithmetic and count the same compute.

Training FLOPs (`esper.simic.flops`): each trainer's `FlopMeter` prices every step on
its own model (never the vmapped stack), once per structure, before the step trains.

Learning rates: the host's parameter group follows `lr_factor` over the episode; every
seed group runs at `cfg.seed_lr_scale` times the host group's current rate
(`esper.simic.schedules.SeedGroups`, the rule the Gardener applies in a user's loop).

Under torchrun (`ranks.spread`, esper.simic.distributed) every rank walks the same batch
order; each trains its shard of every batch through DistributedDataParallel, evaluates its
shard of a split, and the sums are added over the ranks, so every rank reads the same
numbers. Batches with fewer rows than ranks are skipped.

Compilation: with `cfg.compile`, training forward passes run under torch.compile
(`MorphogeneticModel.compile_training`: compiled again only when an edit changes the
structure; CUDA graphs on CUDA), evaluation and the probe eagerly.

Precision: with `cfg.precision == "bf16"` on CUDA, forward passes (host, seeds, blends,
the ablation probe) run under `torch.autocast(dtype=bfloat16)`; parameters, optimizer
state and the loss stay fp32. On the CPU the setting is ignored: autocast there is
slower than fp32 for these convolutions.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from itertools import islice

import torch
from torch.optim.lr_scheduler import LambdaLR

from esper.graph import eval_mode
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
from esper.simic.flops import FlopMeter
from esper.simic.schedules import SeedGroups
from esper.simic.tasks import BatchScore, read_once, task_for


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
    seed_lr_scale: float = 1.0  # seed parameter groups run at this multiple of the host's current lr
    seed_lr_rule: str = "follow"  # or "peak": a seed starts at the host's peak rate (esper.simic.schedules)
    blend_steps: int = 2  # ticks a germinated seed takes to blend in (the policy's Edit.steps)
    # Ticks a seed trains in isolation before the plane starts blending it (a germinated
    # seed starts training at once); None: only the policy advances seeds.
    training_ticks: int | None = 1
    max_slots: int | None = None
    contribution_samples: int = 512  # the fixed validation batch for ablations
    augment: bool = False
    # NHWC activations: convolutions on CPU run about twice as fast in this layout.
    channels_last: bool = False
    precision: str = "fp32"  # or "bf16": autocast on CUDA (see the module docstring)
    compile: bool = False  # training forward passes under torch.compile (see the module docstring)
    # slot -> blueprint: seeds fossilized before the first step, so the episode trains a
    # static bigger model from scratch (the reference that growth is judged against).
    fossils: dict[str, str] = field(default_factory=dict)

    def __post_init__(self):
        if self.epochs < 1 or self.decisions_per_epoch < 1 or self.batch_size < 1 or self.blend_steps < 1:
            raise ValueError("epochs, decisions_per_epoch, batch_size and blend_steps must be at least 1")
        if self.optimizer not in ("sgd", "adamw"):
            raise ValueError(f"optimizer must be 'sgd' or 'adamw', got {self.optimizer!r}")
        if self.training_ticks is not None and self.training_ticks < 1:
            raise ValueError(f"training_ticks must be at least 1 (or None), got {self.training_ticks}")
        if self.lr <= 0 or self.seed_lr_scale <= 0:
            raise ValueError(f"lr and seed_lr_scale must be positive, got {self.lr}, {self.seed_lr_scale}")
        if self.lr_schedule not in ("constant", "cosine") or not 0 <= self.lr_floor <= 1:
            raise ValueError(
                f"lr_schedule must be 'constant' or 'cosine' and lr_floor in [0, 1], got {self.lr_schedule!r}, {self.lr_floor}"
            )
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


def episode_schedule(optimizer: torch.optim.Optimizer, cfg: EnvConfig, total_steps: int) -> LambdaLR:
    """`lr_factor` over the episode's `total_steps` optimizer steps: group lr = initial lr x
    factor. Step it after each optimizer step; `SeedGroups` keeps its per-group lists in
    step with the seed groups that come and go."""
    return LambdaLR(optimizer, lambda step: lr_factor(cfg, step / total_steps))


class HostTrainer:
    """Trains `mm` on `data.train` (batch order drawn from `seed`), evaluates it on any
    split, and probes its seeds on the first `cfg.contribution_samples` of `data.val`."""

    def __init__(self, mm, cfg: EnvConfig, device: torch.device, data, task, seed: int, ranks: Ranks = Ranks()):
        self.mm = mm
        self.ranks = ranks
        self.model = DataParallelHost(mm, ranks)
        mm.plane.defer_culls = ranks.spread
        if cfg.compile:
            mm.compile_training()
        self.task = task
        self.cfg = cfg
        self.device = device
        self.data = data
        self.batches_per_epoch = max(1, math.ceil(len(data.train) / cfg.batch_size))
        self.optimizer = make_optimizer(list(mm.parameters()), cfg)
        mm.plane.attach_optimizer(self.optimizer)
        self.schedule = episode_schedule(self.optimizer, cfg, self.batches_per_epoch * cfg.epochs)
        self.seed_groups = SeedGroups(self.optimizer, self.schedule, cfg.seed_lr_scale, cfg.seed_lr_rule)
        self.guard_culls: list[str] = []
        n = min(cfg.contribution_samples, len(data.val))
        self.probe = (self.place(data.val.x[:n]), data.val.y[:n].to(device))
        self.contributions: dict[str, float] = {}
        self._frozen: dict[str, float] = {}  # a fossil keeps the contribution it had when it fossilized
        self._order = torch.Generator(device=data.train.x.device).manual_seed(seed)
        self._batches: Iterator | None = None
        self.flops = FlopMeter(mm, task, self.autocast, device, ranks.world_size)

    def chunk(self, decision: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Decision `decision`'s 1/decisions_per_epoch of the epoch's batches, on the device
        (a fresh shuffle at the start of each epoch)."""
        k = self.cfg.decisions_per_epoch
        part = decision % k
        if part == 0:
            self._batches = iter(
                self.data.train.batches(self.cfg.batch_size, shuffle=True, generator=self._order, augment=self.cfg.augment)
            )
        n = self.batches_per_epoch
        count = None if part == k - 1 else round((part + 1) * n / k) - round(part * n / k)
        self.mm.train()
        for x, y in islice(self._batches, count):
            if len(y) >= self.ranks.world_size:
                yield self.place(x), y.to(self.device, non_blocking=True)

    def train_chunk(self, batches) -> tuple[float | None, float | None, int, int]:
        """One optimizer step per batch; the chunk's mean loss and accuracy (None without
        batches), its count of examples, read from the device once, and its training FLOPs."""
        return train_chunks([self], [batches], self._forward_backward)[0]

    def _forward_backward(self, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> list[BatchScore]:
        """`train_chunks`' step for this trainer alone: under torchrun, on this rank's shard
        through DistributedDataParallel, its loss weighted so that the all-reduced gradient
        is the global batch's."""
        [(x, y)] = batches
        model, share = self.model(), 1.0
        if self.ranks.spread:
            x, y, share = shard(x, y, self.ranks)

        def forward_backward():
            with self.autocast():  # the loss too: autocast computes cross-entropy in fp32
                score = self.task.score(model(x), y)
            (score.loss * share if self.ranks.spread else score.loss).backward()
            return score

        if self.ranks.spread:  # DDP all-reduces the gradients inside backward()
            return [collective(self.ranks, "a training step's gradient all-reduce", forward_backward, only_transport=True)]
        return [forward_backward()]

    def before_step(self) -> None:
        """Every step starts from no gradients (None: the optimizer skips what got none)."""
        self.optimizer.zero_grad(set_to_none=True)

    def after_step(self, culled: list[str]) -> None:
        """The optimizer step, once the guard has culled `culled` (its seed groups are gone
        from the optimizer): seed groups take their learning rate, then the schedule moves on."""
        self.guard_culls += culled
        self.seed_groups.sync()
        self.optimizer.step()
        self.schedule.step()

    @property
    def host_lr(self) -> float:
        """The host parameter group's learning rate for the coming optimizer step."""
        return self.optimizer.param_groups[0]["lr"]

    def autocast(self):
        if self.cfg.precision == "bf16" and self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return nullcontext()

    def place(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, non_blocking=True)
        return x.contiguous(memory_format=torch.channels_last) if self.cfg.channels_last and x.dim() == 4 else x

    @torch.no_grad()
    def evaluate(self, split) -> tuple[float, float]:
        """Loss and accuracy (a fraction) per prediction of the current model on a TensorData split."""
        if self.ranks.spread:
            n, r, w = len(split), self.ranks.rank, self.ranks.world_size
            split = type(split)(split.x[n * r // w : n * (r + 1) // w], split.y[n * r // w : n * (r + 1) // w])
        loss_sum, correct, seen = torch.zeros((), device=self.device, dtype=torch.float64), 0, 0
        with eval_mode(self.mm):
            for x, y in split.batches(self.cfg.eval_batch_size, shuffle=False):
                x, y = self.place(x), y.to(self.device, non_blocking=True)
                with self.autocast():
                    score = self.task.score(self.mm(x), y)
                loss_sum, correct, seen = loss_sum + score.loss.double() * score.count, correct + score.correct, seen + score.count
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


def train_chunks(
    trainers: Sequence[HostTrainer], chunks: Sequence[Iterator], forward_backward: Callable[[list], list[BatchScore]]
) -> list[tuple[float | None, float | None, int, int]]:
    """K trainers in lockstep, one optimizer step per batch of their chunks (which must hold
    equally many equally sized batches); returns each one's mean loss and accuracy (None
    without batches) and count of examples, read from the device once, and training FLOPs.
    Each step:

        every trainer clears its gradients
        every trainer's FlopMeter prices the step on its own model, as it is before the step
        forward_backward(batches)  one (x, y) per trainer: their losses, backpropagated,
                                   and their BatchScores (the batched runner also steps its
                                   stacked host parameters here, which no trainer's
                                   optimizer holds)
        guard(trainers)            seeds with non-finite outputs or gradients are culled
        every trainer's after_step(culled): seed learning rates, optimizer, schedule

    Sums per trainer: loss_sum += mean loss x count, correct += right predictions,
    flops += the step's FLOPs.
    """
    k, device = len(trainers), trainers[0].device
    loss_sums: list = [torch.zeros((), device=device)] * k
    corrects: list = [0] * k
    counts: list = [0] * k  # Python ints where the task knows them, device tensors where not
    flops = [0] * k
    seen = 0
    for batches in zip(*chunks):
        for trainer in trainers:
            trainer.before_step()
        flops = [f + trainer.flops(x, y) for f, trainer, (x, y) in zip(flops, trainers, batches)]
        scores = forward_backward(list(batches))
        for trainer, culled in zip(trainers, guard(trainers)):
            trainer.after_step(culled)
        loss_sums = [a + s.loss.detach() * s.count for a, s in zip(loss_sums, scores)]
        corrects = [a + s.correct for a, s in zip(corrects, scores)]
        counts = [a + s.count for a, s in zip(counts, scores)]
        seen += len(batches[0][1])
    if any(next(chunk, None) is not None for chunk in chunks):
        raise RuntimeError("trainers in lockstep need chunks of the same length")
    sums = [*loss_sums, *corrects, *counts]
    if trainers[0].ranks.spread:
        for trainer in trainers:
            sync_buffers(trainer.mm, trainer.ranks)
        sums = sum_over_ranks(trainers[0]._sums(*sums), trainers[0].ranks).unbind()
    values = read_once(sums)
    return [
        (loss / n, right / n, seen, f) if n else (None, None, seen, f)
        for loss, right, n, f in zip(values[:k], values[k : 2 * k], values[2 * k :], flops)
    ]


def guard(trainers: Sequence[HostTrainer]) -> list[list[str]]:
    """Each trainer's `plane.guard()` (agreed by every rank under torchrun): the slots it
    culled, with one read of the device for all the trainers."""
    planes = [trainer.mm.plane for trainer in trainers]
    if trainers[0].ranks.spread:
        return [guard_on_all_ranks(plane, trainer.ranks) for plane, trainer in zip(planes, trainers)]
    checks = [plane.health() for plane in planes]
    if not any(live for live, _ in checks):
        return [[] for _ in planes]  # nothing to read
    flags = torch.cat([health for _, health in checks]).tolist()
    culled = []
    for plane, (live, _) in zip(planes, checks):
        culled.append(plane.cull_unhealthy(live, flags[: len(live)]))
        flags = flags[len(live) :]
    return culled


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


def seed_contributions(model, score: Callable[[], float], previous: dict[str, float], frozen: dict[str, float]) -> dict[str, float]:
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
        with eval_mode(model), torch.no_grad():
            with_all = score()
            for slot_id in blending:
                with plane.ablate(slot_id):
                    result[slot_id] = with_all - score()
    for slot_id, slot in plane.slots.items():
        if slot.stage is SeedStage.FOSSILIZED:
            frozen.setdefault(slot_id, previous.get(slot_id, 0.0))
            result[slot_id] = frozen[slot_id]
    return result
