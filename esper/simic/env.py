"""GrowthEnv: one episode grows one instrumented host, with one decision per tick.

An episode (`cfg.epochs` epochs, `cfg.decisions_per_epoch` decisions each):

    reset(seed)  fresh host from the factory, instrumented; its own HostTrainer
                 (`host_training.py`: optimizer, learning-rate schedule, precision, batch
                 order, ablation probe) which seeds join on germination through
                 `plane.attach_optimizer`; validation loss/accuracy of the untrained
                 model; the first Observation.
    step(edit)   apply(edit): plane.apply(edit)   (the one path: the plane logs it)
                 trainer.train_chunk(trainer.chunk(t)): 1/decisions_per_epoch of an epoch
                 finish(): plane.step()           (one tick: blends advance)
                 validation loss/accuracy; trainer.measure_contributions()
                 reward = compute_reward(prev state, this state, edit, done)
                 returns StepResult(observation, reward, done, info: StepInfo)

A tick is one decision interval: with the default one decision per epoch, plane.step()
runs once per epoch and blend `steps` count epochs.

Every random draw of an episode comes from the environment's own RngStream
(`episode.py`), seeded at reset.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from esper.kasmina.blending import blend_names
from esper.kasmina.blueprints import blueprint_ranks, registered_names
from esper.kasmina.instrument import instrument
from esper.kasmina.replay import fossilize_from_start
from esper.leyline import Edit, EpisodeSummary, Observation, StepInfo
from esper.runs.report import timeline_row
from esper.simic.distributed import Ranks, check_in_step
from esper.simic.episode import EpisodeRecord, Numbers, RngStream
from esper.simic.features import build_observation
from esper.simic.host_training import EnvConfig, HostTrainer
from esper.simic.rewards import RewardBreakdown, RewardConfig, RewardState, compute_reward
from esper.simic.tasks import task_for

__all__ = ["EnvConfig", "GrowthEnv", "StepResult"]


@dataclass
class StepResult:
    observation: Observation
    reward: RewardBreakdown
    done: bool
    info: StepInfo


class GrowthEnv:
    """One environment. `host_factory()` must return a fresh host on every call; `data`
    has `.train`, `.val` (TensorData) and `.num_classes` (esper.data.splits.DataSplits).
    The targets choose the task (esper.simic.tasks): class ids, or next tokens. Under
    torchrun, `ranks` says which process this is: every rank runs the same episode on
    its shards of the data (esper.simic.distributed)."""

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
        ranks: Ranks = Ranks(),
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
        self.rng = RngStream(self.device)
        self.ranks = ranks
        self.mm = None
        self.done = True

    @property
    def plane(self):
        return self.mm.plane

    def reset(self, seed: int) -> Observation:
        cfg = self.cfg
        with self.rng(seed):
            host = self.host_factory().to(self.device)
            self.mm = instrument(host, (self.example,), max_slots=cfg.max_slots)
            with torch.no_grad():
                self.task.check_output(self.mm(self.example), self.example, self.data)
            fossilize_from_start(self.plane, cfg.fossils)
            if cfg.channels_last:
                self.mm.to(memory_format=torch.channels_last)
            self.trainer = HostTrainer(self.mm, cfg, self.device, self.data, self.task, seed, self.ranks)
        self.host_params = self.mm.host_parameter_count()
        self.t = 0
        self.done = False
        val_loss, val_acc = self.trainer.evaluate(self.data.val)
        self.record = EpisodeRecord(self.plane, val_loss, val_acc)
        telemetry = self._telemetry()
        self.reward_state = RewardState.from_telemetry(telemetry, val_acc, self.host_params, self.total_params(), {})
        return self._observe(telemetry)

    def step(self, edit: Edit) -> StepResult:
        """apply(edit), train this step's chunk, finish(): the three parts a batched runner
        interleaves across K environments."""
        logged = self.apply(edit)
        with self.rng():
            start = time.perf_counter()
            train_loss, train_acc, seen = self.trainer.train_chunk(self.trainer.chunk(self.t))
            seconds = time.perf_counter() - start
        return self.finish(logged, train_loss, train_acc, seen, seconds)

    def apply(self, edit: Edit) -> Edit:
        """The step's edit, through the plane (which logs it); returns the logged edit."""
        if self.done:
            raise RuntimeError("the episode is over: call reset() first")
        with self.rng():
            logged = self.plane.apply(edit)
            if self.cfg.channels_last:  # a new seed's weights: before its optimizer state exists
                self.mm.to(memory_format=torch.channels_last)
        self.record.ops[logged.op.name] += 1
        return logged

    def finish(self, logged: Edit, train_loss: float | None, train_acc: float | None, images: int, seconds: float) -> StepResult:
        """After the chunk: tick the plane, evaluate, measure contributions, reward, observe.
        A chunk without batches (None) keeps the last training numbers."""
        if images == 0:
            train_loss, train_acc = self.record.now.train_loss, self.record.now.train_acc
        with self.rng():
            self.plane.step()
            check_in_step(self.mm, self.ranks)
            val_loss, val_acc = self.trainer.evaluate(self.data.val)
            contributions = self.trainer.measure_contributions()
        self.t += 1
        self.done = self.t >= self.cfg.decisions
        telemetry = self._telemetry()
        params = self.total_params()
        state = RewardState.from_telemetry(telemetry, val_acc, self.host_params, params, contributions, prev=self.reward_state)
        reward = compute_reward(self.reward_state, state, logged, self.done, self.reward_cfg)
        self.reward_state = state
        numbers = Numbers(train_loss, train_acc, val_loss, val_acc)
        slots = timeline_row(self.plane)
        self.record.add_step(numbers, reward, slots, images, seconds)
        info = StepInfo(self.t, self.t / self.cfg.decisions_per_epoch, logged, **vars(numbers),
                        contributions=dict(contributions), reward=reward.as_dict(), params=params,
                        host_params=self.host_params, slots=slots, images=images, train_seconds=seconds)
        return StepResult(self._observe(telemetry), reward, self.done, info)

    def summary(self) -> EpisodeSummary:
        """The episode in numbers (call after the last step)."""
        return self.record.summary(self.plane, self.total_params(), self.host_params)

    def evaluate(self, split) -> tuple[float, float]:
        """Loss and accuracy (a fraction) of the current model on a TensorData split."""
        return self.trainer.evaluate(split)

    def total_params(self) -> int:
        return sum(p.numel() for p in self.mm.parameters())

    def _telemetry(self):
        return [slot.telemetry() for slot in self.plane.slots.values()]

    def _observe(self, telemetry) -> Observation:
        signals = self.record.signals(self.t, self.cfg.decisions, self.host_params, self.total_params())
        causal = self.plane.causal  # on a causal host only causal-safe seeds are offered
        return build_observation(telemetry, signals, self.trainer.contributions, self.blueprints, blueprint_ranks(causal),
                                 self.blends, usable_blends=blend_names(causal))
