"""GrowthEnv: one episode grows one instrumented host, with one decision per tick.

An episode (`cfg.epochs` epochs, `cfg.decisions_per_epoch` decisions each):

    reset(seed)  fresh host from the factory, instrumented; its own HostTrainer
                 (`host_training.py`: optimizer, learning-rate schedule, precision) which
                 seeds join on germination through `plane.attach_optimizer`;
                 validation loss/accuracy of the untrained model; the first Observation.
    step(edit)   apply(edit): plane.apply(edit)   (the one path: the plane logs it)
                 chunk(): 1/decisions_per_epoch of an epoch, trained batch by batch
                 finish(): plane.step()           (one tick: blends advance)
                 validation loss/accuracy; each BLENDING seed's contribution =
                 accuracy on a fixed validation batch minus the same with plane.ablate(slot)
                 reward = compute_reward(prev state, this state, edit, done)
                 returns StepResult(observation, reward, done, info)

A tick is one decision interval: with the default one decision per epoch, plane.step()
runs once per epoch and blend `steps` count epochs.

Every random draw of an episode (host init, seed init, batch order) comes from the
environment's own RNG stream, seeded at reset: an episode is the same whatever the
policy samples and whichever other environments run beside it.
"""

from __future__ import annotations

import copy
import math
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from itertools import islice
from typing import Any, Callable

import torch
from torch import nn

from esper.kasmina.blending import blend_names
from esper.kasmina.blueprints import blueprint_names, blueprint_ranks
from esper.kasmina.instrument import instrument
from esper.leyline import ACTIVE_STAGES, Edit, EpisodeSummary, Observation, Op, SeedStage
from esper.runs.report import timeline_row
from esper.simic.features import TrainingSignals, build_observation, probe_accuracy, seed_contributions
from esper.simic.host_training import EnvConfig, HostTrainer
from esper.simic.rewards import RewardBreakdown, RewardConfig, RewardState, compute_reward
from esper.simic.tasks import read_once, task_for

S = SeedStage


@dataclass
class StepResult:
    observation: Observation
    reward: RewardBreakdown
    done: bool
    info: dict[str, Any]


def reinitialized_copies(template: nn.Module) -> Callable[[], nn.Module]:
    """A host factory: each call deep-copies `template` and re-runs every submodule's
    `reset_parameters()`, so each episode starts from a fresh random init drawn from the
    current RNG (parameters of modules without reset_parameters keep the template's values)."""

    def build() -> nn.Module:
        host = copy.deepcopy(template)
        for module in host.modules():
            reset = getattr(module, "reset_parameters", None)
            if callable(reset):
                reset()
            if isinstance(module, nn.modules.batchnorm._NormBase) and module.track_running_stats:
                module.reset_running_stats()
        return host

    return build


def registered_names(blueprints: list[str] | None = None, blends: list[str] | None = None) -> tuple[list[str], list[str]]:
    """The blueprint and blend names of a vocabulary, checked against the registries
    (default: every registered one)."""
    blueprints = list(blueprints or blueprint_names())
    blends = list(blends or blend_names())
    known_bp, known_bl = set(blueprint_names()), set(blend_names())
    unknown = [b for b in blueprints if b not in known_bp] + [b for b in blends if b not in known_bl]
    if unknown:
        raise ValueError(f"unknown blueprints/blends {unknown}; registered: {sorted(known_bp)} / {sorted(known_bl)}")
    return blueprints, blends


class GrowthEnv:
    """One environment. `host_factory()` must return a fresh host on every call; `data`
    has `.train`, `.val` (TensorData) and `.num_classes` (esper.data.splits.DataSplits).
    The targets choose the task (esper.simic.tasks): class ids, or next tokens."""

    def __init__(
        self,
        host_factory: Callable[[], nn.Module],
        data,
        cfg: EnvConfig | None = None,
        reward: RewardConfig | None = None,
        *,
        blueprints: list[str] | None = None,
        blends: list[str] | None = None,
        device: str | torch.device = "cpu",
        example_input: torch.Tensor | None = None,
    ):
        self.host_factory = host_factory
        self.data = data
        self.cfg = cfg or EnvConfig()
        self.reward_cfg = reward or RewardConfig()
        self.blueprints, self.blends = registered_names(blueprints, blends)
        self.task = task_for(data.train.y)
        self.device = torch.device(device)
        example = example_input if example_input is not None else data.train.x[:2]
        self.example = example.to(self.device)
        self.mm = None
        self.done = True
        self._cpu_rng: torch.Tensor | None = None
        self._cuda_rng: torch.Tensor | None = None

    # ---- RNG isolation -----------------------------------------------------------------
    @contextmanager
    def _own_rng(self, seed: int | None = None):
        cuda = self.device.type == "cuda"
        devices = [self.device.index or 0] if cuda else []
        with torch.random.fork_rng(devices=devices):
            if seed is not None:
                torch.manual_seed(seed)
            else:
                torch.set_rng_state(self._cpu_rng)
                if cuda:
                    torch.cuda.set_rng_state(self._cuda_rng, self.device)
            try:
                yield
            finally:
                self._cpu_rng = torch.get_rng_state()
                if cuda:
                    self._cuda_rng = torch.cuda.get_rng_state(self.device)

    # ---- the episode ---------------------------------------------------------------------
    @property
    def plane(self):
        return self.mm.plane

    def reset(self, seed: int) -> Observation:
        cfg = self.cfg
        with self._own_rng(seed):
            host = self.host_factory().to(self.device)
            self.mm = instrument(host, (self.example,), max_slots=cfg.max_slots)
            with torch.no_grad():
                self.task.check_output(self.mm(self.example), self.example, self.data)
            self._fossilize_static()
            if cfg.channels_last:
                self.mm.to(memory_format=torch.channels_last)
            self._train_batches = max(1, math.ceil(len(self.data.train) / cfg.batch_size))
            self.trainer = HostTrainer(self.mm, cfg, self.device, self._train_batches, self.task)
            n = min(cfg.contribution_samples, len(self.data.val))
            self._probe = (self.trainer.place(self.data.val.x[:n]), self.data.val.y[:n].to(self.device))
            self._data_gen = torch.Generator(device=self.data.train.x.device).manual_seed(seed)
        self.host_params = self.mm.host_parameter_count()
        self.t = 0
        self.done = False
        self._batches = None
        val_loss, val_acc = self.evaluate(self.data.val)
        # Before any training the model's training-set numbers are its validation numbers.
        self.history = {"train_loss": [], "train_acc": [], "val_loss": [], "val_acc": []}
        self.now = {"train_loss": val_loss, "train_acc": val_acc, "val_loss": val_loss, "val_acc": val_acc}
        self.contributions: dict[str, float] = {}
        self._frozen: dict[str, float] = {}  # a fossil keeps the contribution it had when it fossilized
        self.initial_val_acc = val_acc
        self.rewards: list[RewardBreakdown] = []
        self.ops: Counter = Counter()
        self.timeline: list[dict] = [timeline_row(self.plane)]
        self.images = 0
        self.train_seconds = 0.0
        telemetry = self._telemetry()
        self.reward_state = RewardState.from_telemetry(telemetry, val_acc, self.host_params, self.total_params(), {})
        return self._observe(telemetry)

    def step(self, edit: Edit) -> StepResult:
        """apply(edit), train this step's chunk, finish(): the three parts a batched runner
        interleaves across K environments."""
        logged = self.apply(edit)
        with self._own_rng():
            start = time.perf_counter()
            loss_sum, correct, count, seen = torch.zeros((), device=self.device), 0, 0, 0
            for x, y in self.chunk():
                batch_loss, batch_correct, batch_count = self.trainer.train_step(x, y)
                loss_sum, correct, count = loss_sum + batch_loss, correct + batch_correct, count + batch_count
                seen += len(y)
            loss_sum, correct, count = read_once([loss_sum, correct, count])  # the chunk's one read of the device
            train_loss, train_acc = (loss_sum / count, correct / count) if count else (None, None)
            seconds = time.perf_counter() - start
        return self.finish(logged, train_loss, train_acc, seen, seconds)

    def apply(self, edit: Edit) -> Edit:
        """The step's edit, through the plane (which logs it); returns the logged edit."""
        if self.done:
            raise RuntimeError("the episode is over: call reset() first")
        with self._own_rng():
            logged = self.plane.apply(edit)
            if self.cfg.channels_last:  # a new seed's weights: before its optimizer state exists
                self.mm.to(memory_format=torch.channels_last)
        self.ops[logged.op.name] += 1
        return logged

    def chunk(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """This step's 1/decisions_per_epoch of the epoch's batches, on the device."""
        k = self.cfg.decisions_per_epoch
        part = self.t % k
        if part == 0:
            self._batches = iter(
                self.data.train.batches(self.cfg.batch_size, shuffle=True, generator=self._data_gen, augment=self.cfg.augment)
            )
        n = self._train_batches
        count = None if part == k - 1 else round((part + 1) * n / k) - round(part * n / k)
        self.mm.train()
        for x, y in islice(self._batches, count):
            yield self.trainer.place(x), y.to(self.device, non_blocking=True)

    def finish(self, logged: Edit, train_loss: float | None, train_acc: float | None, images: int, seconds: float) -> StepResult:
        """After the chunk: tick the plane, evaluate, measure contributions, reward, observe.
        A chunk without batches (None) keeps the last training numbers."""
        if images == 0:
            train_loss, train_acc = self.now["train_loss"], self.now["train_acc"]
        with self._own_rng():
            self.plane.step()
            val_loss, val_acc = self.evaluate(self.data.val)
            probe = partial(probe_accuracy, self.mm, *self._probe, self.cfg.eval_batch_size)
            with self.trainer.autocast():
                self.contributions = seed_contributions(self.mm, probe, self.contributions, self._frozen)
        self.images += images
        self.train_seconds += seconds
        for key, value in zip(self.now, (train_loss, train_acc, val_loss, val_acc)):
            self.history[key].append(self.now[key])
            self.now[key] = value
        self.t += 1
        self.done = self.t >= self.cfg.decisions
        telemetry = self._telemetry()
        state = RewardState.from_telemetry(
            telemetry, val_acc, self.host_params, self.total_params(), self.contributions, prev=self.reward_state
        )
        reward = compute_reward(self.reward_state, state, logged, self.done, self.reward_cfg)
        self.reward_state = state
        self.rewards.append(reward)
        slots = timeline_row(self.plane)
        self.timeline.append(slots)
        info = {
            "step": self.t,
            "epoch": self.t / self.cfg.decisions_per_epoch,
            "edit": logged.to_dict(),
            **self.now,
            "contributions": dict(self.contributions),
            "reward": reward.as_dict(),
            "params": self.total_params(),
            "host_params": self.host_params,
            "slots": slots,
            "images": images,
            "train_seconds": seconds,
        }
        return StepResult(self._observe(telemetry), reward, self.done, info)

    def summary(self) -> EpisodeSummary:
        """The episode in numbers (call after the last step)."""
        components = {k: sum(r.as_dict()[k] for r in self.rewards) for k in RewardBreakdown.__dataclass_fields__}
        stages = [s.stage for s in self.plane.slots.values()]
        fossils = [s.blueprint for s in self.plane.slots.values() if s.stage is S.FOSSILIZED]
        auto_culls = sum("non-finite" in e for s in self.plane.slots.values() for e in s.events)
        return EpisodeSummary(
            episode_return=sum(r.total for r in self.rewards),
            reward=components,
            initial_val_acc=self.initial_val_acc,
            val_acc=self.now["val_acc"],
            val_loss=self.now["val_loss"],
            best_val_acc=max(self.history["val_acc"] + [self.now["val_acc"]]),
            train_acc=self.now["train_acc"],
            ops={op.name: self.ops.get(op.name, 0) for op in Op},
            germinated=self.ops.get("GERMINATE", 0),
            fossilized=len(fossils),
            fossil_blueprints=fossils,
            culled=self.ops.get("CULL", 0) + auto_culls,
            live_at_end=sum(st in ACTIVE_STAGES for st in stages),
            params=self.total_params(),
            host_params=self.host_params,
            images=self.images,
            train_seconds=self.train_seconds,
            timeline=self.timeline,
        )

    # ---- pieces ----------------------------------------------------------------------------
    def _fossilize_static(self) -> None:
        """Grow `cfg.fossils` to the end of their lifecycle before any training; the
        edits go through the plane like any other, so the edit log replays."""
        unknown = sorted(set(self.cfg.fossils) - set(self.plane.slots))
        if unknown:
            raise ValueError(f"fossils name unknown slots {unknown}; this host has {list(self.plane.slots)}")
        for slot, blueprint in self.cfg.fossils.items():
            self.plane.apply(Edit(Op.GERMINATE, slot, blueprint=blueprint, blend="linear", steps=1))
            self.plane.apply(Edit(Op.ADVANCE, slot))
            self.plane.apply(Edit(Op.ADVANCE, slot))
        if self.cfg.fossils:
            self.plane.step()
            for slot in self.cfg.fossils:
                self.plane.apply(Edit(Op.FOSSILIZE, slot))

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        return self.trainer.optimizer

    @property
    def guard_culls(self) -> list[str]:
        return self.trainer.guard_culls

    def evaluate(self, split) -> tuple[float, float]:
        """Loss and accuracy (a fraction) of the current model on a TensorData split."""
        return self.trainer.evaluate(split)

    def total_params(self) -> int:
        return sum(p.numel() for p in self.mm.parameters())

    def _telemetry(self):
        return [slot.telemetry() for slot in self.plane.slots.values()]

    def _observe(self, telemetry) -> Observation:
        h = self.history
        signals = TrainingSignals(
            decision=self.t,
            total_decisions=self.cfg.decisions,
            train_loss=self.now["train_loss"],
            train_acc=self.now["train_acc"],
            val_loss=self.now["val_loss"],
            val_acc=self.now["val_acc"],
            host_params=self.host_params,
            total_params=self.total_params(),
            train_loss_history=list(h["train_loss"]),
            train_acc_history=list(h["train_acc"]),
            val_loss_history=list(h["val_loss"]),
            val_acc_history=list(h["val_acc"]),
        )
        causal = self.plane.causal  # on a causal host only causal-safe seeds are offered
        return build_observation(telemetry, signals, self.contributions, self.blueprints, blueprint_ranks(causal),
                                 self.blends, usable_blends=blend_names(causal))
