"""The growth loop: one decision interval after another, the same for every way of growing.

    loop = GrowthLoop(mm, vocab, decisions=T, measure=...)
    loop.start(numbers)              # the untrained model's numbers: decision 0 is observable
    while not loop.done:
        obs = loop.observe()         # observe
        loop.apply(policy.decide([obs])[0])   # decide, apply: the plane logs the edit at tick t
        ...train the interval, then measure its numbers (training chunk, validation)...
        info = loop.close(numbers)   # tick, measure contributions, reward -> StepInfo

`GrowthEnv` (and so `esper grow`, `esper train` and the evidence tools) runs it with the
numbers of `HostTrainer`'s chunks; the `Gardener` (and so the HuggingFace and Lightning
callbacks) with the numbers a user's loop measured. Both evaluate a trained interval
before its tick, as a user's loop does at the end of an epoch, so a policy sees the same
observations, in the same order, wherever it runs: decisions at ticks 0..T-1, edits
logged at those ticks, and T StepInfos.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from functools import partial

import torch

from esper.kasmina.blending import blend_names
from esper.kasmina.blueprints import blueprints_for
from esper.leyline import Edit, EpisodeSummary, Observation, StepInfo, Vocabulary
from esper.runs.report import timeline_row
from esper.simic.distributed import Ranks, check_in_step
from esper.simic.episode import EpisodeRecord, Numbers
from esper.simic.features import build_observation
from esper.simic.flops import host_profile
from esper.simic.rewards import RewardBreakdown, RewardConfig, RewardState, compute_reward


class ShortRunWarning(UserWarning):
    """A growth run has too few decisions for any seed to be fossilized."""


def decisions_to_fossil(blend_steps: int, training_ticks: int | None) -> int:
    """The fewest decisions in which a seed germinated at the first can be fossilized: it
    trains `training_ticks` ticks and blends `blend_steps`, and the fossilize decision
    comes after them. Left to the policy, each advance takes a decision and a tick."""
    moving = training_ticks if training_ticks is not None else 2  # advance to TRAINING, train a tick, advance
    return moving + blend_steps + 1


class GrowthLoop:
    """The decisions of one growth run of `decisions` intervals, `decisions_per_epoch` of
    them an epoch. `measure()` returns each BLENDING seed's (and fossil's) contribution
    after a tick, or {} when nothing measures them. With `training_ticks` the plane moves
    seeds on by itself (`KasminaPlane.advance_due`): a germinated seed starts training in
    the interval it was germinated for, and one that has trained `training_ticks` starts
    blending before the policy's next decision. None leaves every ADVANCE to the policy.
    `classes` (of the task; a next-token task's vocabulary; default: the width of the
    model's output) lets the features read accuracies and losses against chance."""

    def __init__(
        self,
        mm,
        vocab: Vocabulary,
        *,
        decisions: int,
        decisions_per_epoch: int = 1,
        measure: Callable[[], dict[str, float]] | None = None,
        reward: RewardConfig | None = None,
        ranks: Ranks = Ranks(),
        training_ticks: int | None = None,
        classes: int | None = None,
    ):
        if decisions < 1 or decisions_per_epoch < 1:
            raise ValueError(f"decisions and decisions_per_epoch must be at least 1, got {decisions}, {decisions_per_epoch}")
        self.mm = mm
        self.plane = mm.plane
        self.vocab = vocab
        self.decisions = decisions
        self.decisions_per_epoch = decisions_per_epoch
        self.measure = measure or dict
        self.reward_cfg = reward or RewardConfig()
        self.ranks = ranks
        self.training_ticks = training_ticks
        need = decisions_to_fossil(vocab.blend_steps, training_ticks)
        if decisions < need:
            warnings.warn(
                f"a growth run of {decisions} decisions cannot fossilize any seed: germinating, training and blending "
                f"({vocab.blend_steps} blend steps) take {need}; train more epochs, decide more often "
                "(decisions_per_epoch), or blend in fewer steps (blend_steps)",
                ShortRunWarning,
                stacklevel=3,
            )
        # Measured once: the features place slots by the host's compute before them.
        self.profile = host_profile(mm)
        outputs = self.profile.outputs if self.profile else None
        self.classes = classes or (outputs if outputs and outputs >= 2 else None)
        self.usable_blends = blend_names(self.plane.causal)  # on a causal host only causal-safe seeds are offered
        self.host_params = mm.host_parameter_count()
        self.contributions: dict[str, float] = {}
        # The host alone's validation accuracy at decisions 0..T on the same seed, when known:
        # the reward then pays for accuracy beyond what the host reaches by itself.
        self.twin: list[float] | None = None
        self.t = 0
        self.record: EpisodeRecord | None = None
        self._edit: Edit | None = None  # the edit that opened the interval now running

    @property
    def done(self) -> bool:
        return self.t >= self.decisions

    @property
    def reward(self) -> RewardBreakdown:
        """The last closed interval's reward."""
        return self.record.rewards[-1]

    def total_params(self) -> int:
        return sum(p.numel() for p in self.mm.parameters())

    def start(self, numbers: Numbers) -> None:
        """Begin at decision 0 with the numbers of the model before training (NaN: unknown)."""
        self.record = EpisodeRecord(self.plane, numbers)
        self._reward_state = RewardState.from_telemetry(
            self._telemetry(), self._paid(numbers.val_acc, 0), self.host_params, self.total_params(), {}
        )

    def observe(self) -> Observation:
        signals = self.record.signals(
            self.t,
            self.decisions,
            self.host_params,
            self.total_params(),
            decisions_per_epoch=self.decisions_per_epoch,
            classes=self.classes,
            param_budget=self.reward_cfg.param_budget,
        )
        return build_observation(
            self._telemetry(),
            signals,
            self.contributions,
            list(self.vocab.blueprints),
            partial(blueprints_for, causal=self.plane.causal),
            list(self.vocab.blends),
            usable_blends=self.usable_blends,
            profile=self.profile,
        )

    def apply(self, edit: Edit) -> Edit:
        """Decision t's edit, through the plane (which logs it); returns the logged edit."""
        if self.done:
            raise RuntimeError(f"the growth run is over: all {self.decisions} decisions were taken")
        if self._edit is not None:
            raise RuntimeError(f"decision {self.t} was applied already: close() the interval it opened first")
        self._edit = self.plane.apply(edit)
        if self.training_ticks is not None:  # a seed germinated now trains in this interval
            self.plane.advance_due(self.training_ticks)
        self.record.ops[self._edit.op.name] += 1
        return self._edit

    def close(self, numbers: Numbers, images: int = 0, seconds: float = 0.0, flops: int | None = None) -> StepInfo:
        """End interval t with its numbers (training numbers of None: no batches, keep the
        last ones): tick the plane, measure the contributions, reward, record. `images`,
        `seconds` and `flops` are the interval's training examples, wall time and training
        FLOPs where the trainer counted them; a user's own loop (the Gardener) does not
        report them, and its FLOPs stay None: unknown, not zero."""
        if self._edit is None:
            raise RuntimeError(f"interval {self.t} has no edit: apply() decision {self.t} first")
        if numbers.train_loss is None:
            numbers = Numbers(self.record.now.train_loss, self.record.now.train_acc, numbers.val_loss, numbers.val_acc)
        self.plane.step()
        if self.training_ticks is not None and self.t + 1 < self.decisions:  # no move after the last decision
            self.plane.advance_due(self.training_ticks)
        check_in_step(self.mm, self.ranks)
        self.contributions = self.measure()
        self.t += 1
        telemetry = self._telemetry()
        params = self.total_params()
        state = RewardState.from_telemetry(
            telemetry, self._paid(numbers.val_acc, self.t), self.host_params, params, self.contributions, prev=self._reward_state
        )
        reward = compute_reward(self._reward_state, state, self._edit, self.done, self.reward_cfg)
        self._reward_state = state
        slots = timeline_row(self.plane)
        self.record.add_step(numbers, reward, slots, images, seconds, flops)
        info = StepInfo(
            self.t,
            self.t / self.decisions_per_epoch,
            self._edit,
            **vars(numbers),
            contributions=dict(self.contributions),
            reward=reward.as_dict(),
            params=params,
            host_params=self.host_params,
            slots=slots,
            images=images,
            train_seconds=seconds,
            train_flops=flops,
        )
        self._edit = None
        return info

    def summary(self, host_flops_per_image: float | None = None) -> EpisodeSummary:
        """The run in numbers; `host_flops_per_image` is what a training example costs the
        host alone, where the trainer measured it."""
        return self.record.summary(self.plane, self.total_params(), self.host_params, host_flops_per_image)

    def _paid(self, val_acc: float, t: int) -> float:
        """The accuracy the reward reads at decision t: against the twin's when there is one."""
        return val_acc - self.twin[t] if self.twin is not None else val_acc

    def _telemetry(self):
        return [slot.telemetry() for slot in self.plane.slots.values()]


def number(value) -> float:
    """A metric as a float; None (not measured) reads as NaN, which the features mark unknown."""
    if value is None:
        return math.nan
    return float(value.item() if isinstance(value, torch.Tensor) else value)
