"""GrowthEnv: one episode grows one instrumented host, with one decision per tick.

An episode (`cfg.epochs` epochs, `cfg.decisions_per_epoch` decisions each) is the growth
loop (`loop.py`) driven by a HostTrainer:

    reset(seed)  fresh host from the factory, instrumented; its own HostTrainer
                 (`host_training.py`: optimizer, learning-rate schedule, precision, batch
                 order, ablation probe) which seeds join on germination; validation loss
                 and accuracy of the untrained model start the loop; the first Observation.
    step(edit)   apply(edit): loop.apply(edit)   (the plane applies and logs it)
                 trainer.train_chunk(trainer.chunk(t)): 1/decisions_per_epoch of an epoch,
                 and its training FLOPs (esper.simic.flops)
                 finish(): validation loss/accuracy, then loop.close(): plane.step() (one
                 tick: blends advance), trainer.measure_contributions(), the reward
                 returns StepResult(observation, reward, done, info: StepInfo)

A tick is one decision interval: with the default one decision per epoch, plane.step()
runs once per epoch and blend `steps` count epochs.

Every random draw of an episode comes from the environment's own RngStream
(`episode.py`), seeded at reset.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from esper.graph import eval_mode
from esper.kasmina.blueprints import registered_names
from esper.kasmina.instrument import instrument
from esper.kasmina.replay import fossilize_from_start
from esper.leyline import Edit, EpisodeSummary, Observation, Op, StepInfo, Vocabulary
from esper.simic.distributed import Ranks
from esper.simic.episode import Numbers, RngStream
from esper.simic.host_training import EnvConfig, HostTrainer
from esper.simic.loop import GrowthLoop
from esper.simic.rewards import RewardBreakdown, RewardConfig
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
    its shards of the data (esper.simic.distributed). With `reward.relative_to_twin`, each
    seed's host-alone twin runs once and is kept in `twin_cache` (seed -> validation
    accuracies), which environments of the same host and data may share."""

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
        twin_cache: dict[int, list[float]] | None = None,
    ):
        self.host_factory = host_factory
        self.data = data
        self.cfg = cfg or EnvConfig()
        self.reward_cfg = reward or RewardConfig()
        self.vocab = Vocabulary(*registered_names(blueprints, blends), self.cfg.blend_steps)
        self.task = task_for(data.train.y)
        self.device = torch.device(device)
        example = example_input if example_input is not None else data.train.x[:2]
        self.example = example.to(self.device)
        self.rng = RngStream(self.device)
        self.ranks = ranks
        self.mm = None
        self.loop: GrowthLoop | None = None
        self._twins = twin_cache if twin_cache is not None else {}

    @property
    def plane(self):
        return self.mm.plane

    def reset(self, seed: int) -> Observation:
        twin = self._twin(seed) if self.reward_cfg.relative_to_twin else None
        cfg = self.cfg
        with self.rng(seed):
            host = self.host_factory().to(self.device)
            self.mm = instrument(host, (self.example,), max_slots=cfg.max_slots)
            with eval_mode(self.mm), torch.no_grad():  # a check: BatchNorm's running statistics stay as they were
                self.task.check_output(self.mm(self.example), self.example, self.data)
            fossilize_from_start(self.plane, cfg.fossils)
            if cfg.channels_last:
                self.mm.to(memory_format=torch.channels_last)
            self.trainer = HostTrainer(self.mm, cfg, self.device, self.data, self.task, seed, self.ranks)
        self.loop = GrowthLoop(
            self.mm,
            self.vocab,
            decisions=cfg.decisions,
            decisions_per_epoch=cfg.decisions_per_epoch,
            measure=self.trainer.measure_contributions,
            reward=self.reward_cfg,
            ranks=self.ranks,
            training_ticks=cfg.training_ticks,
            classes=self.data.num_classes,
        )
        self.loop.twin = twin
        self.loop.start(Numbers.before_training(*self.trainer.evaluate(self.data.val)))
        return self.loop.observe()

    def _twin(self, seed: int) -> list[float]:
        """The validation accuracies of `seed`'s host alone at every decision (run once per
        seed, then cached): initialisation and batch order come from the seed, so the twin
        is what this episode would reach growing nothing."""
        if seed not in self._twins:
            relative, self.reward_cfg = self.reward_cfg, dataclasses.replace(self.reward_cfg, relative_to_twin=False)
            try:
                self.reset(seed)
                accuracies = [self.loop.record.now.val_acc]
                while not self.done:
                    accuracies.append(self.step(Edit(Op.WAIT)).info.val_acc)
            finally:
                self.reward_cfg = relative
            self._twins[seed] = accuracies
        return self._twins[seed]

    @property
    def done(self) -> bool:
        return self.loop is None or self.loop.done

    @property
    def t(self) -> int:
        """Decisions taken so far."""
        return self.loop.t

    def step(self, edit: Edit) -> StepResult:
        """apply(edit), train this step's chunk, finish(): the three parts a batched runner
        interleaves across K environments."""
        self.apply(edit)
        with self.rng():
            start = time.perf_counter()
            train_loss, train_acc, seen, flops = self.trainer.train_chunk(self.trainer.chunk(self.t))
            seconds = time.perf_counter() - start
        return self.finish(train_loss, train_acc, seen, seconds, flops)

    def apply(self, edit: Edit) -> Edit:
        """The step's edit, through the loop (the plane logs it); returns the logged edit."""
        if self.done:
            raise RuntimeError("the episode is over: call reset() first")
        with self.rng():
            logged = self.loop.apply(edit)
            if self.cfg.channels_last:  # a new seed's weights: before its optimizer state exists
                self.mm.to(memory_format=torch.channels_last)
        return logged

    def finish(self, train_loss: float | None, train_acc: float | None, images: int, seconds: float, flops: int) -> StepResult:
        """After the chunk (`images` examples, `seconds` of wall time, `flops` of training
        compute): evaluate, then close the loop's interval (tick, measure contributions,
        reward) and observe. A chunk without batches (None) keeps the last training numbers."""
        with self.rng():
            val_loss, val_acc = self.trainer.evaluate(self.data.val)
            info = self.loop.close(Numbers(train_loss, train_acc, val_loss, val_acc), images, seconds, flops)
        return StepResult(self.loop.observe(), self.loop.reward, self.done, info)

    def summary(self) -> EpisodeSummary:
        """The episode in numbers (call after the last step)."""
        return self.loop.summary(host_flops_per_image=self.trainer.flops.host_per_image)

    def evaluate(self, split) -> tuple[float, float]:
        """Loss and accuracy (a fraction) of the current model on a TensorData split."""
        return self.trainer.evaluate(split)

    def total_params(self) -> int:
        return self.loop.total_params()
