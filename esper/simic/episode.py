"""An episode's own random stream, and its record: the numbers after every step, the
rewards, the edits by op and the slots' timeline, from which its summary is made."""

from __future__ import annotations

from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from esper.leyline import ACTIVE_STAGES, EpisodeSummary, Op, SeedStage
from esper.runs.report import timeline_row
from esper.simic.features import TrainingSignals, check_accuracies
from esper.simic.rewards import RewardBreakdown


class RngStream:
    """Every random draw of an episode (host init, seed init, batch order) runs inside
    `with stream():`, which swaps in the episode's own CPU (and CUDA) generator state and
    saves it back on exit: an episode is the same whatever the policy samples and
    whichever other environments run beside it. `with stream(seed):` starts it afresh."""

    def __init__(self, device: torch.device):
        self.device = device
        self._cpu: torch.Tensor | None = None
        self._cuda: torch.Tensor | None = None

    @contextmanager
    def __call__(self, seed: int | None = None):
        cuda = self.device.type == "cuda"
        with torch.random.fork_rng(devices=[self.device.index or 0] if cuda else []):
            if seed is not None:
                torch.manual_seed(seed)
            else:
                torch.set_rng_state(self._cpu)
                if cuda:
                    torch.cuda.set_rng_state(self._cuda, self.device)
            try:
                yield
            finally:
                self._cpu = torch.get_rng_state()
                if cuda:
                    self._cuda = torch.cuda.get_rng_state(self.device)


@dataclass
class Numbers:
    """The host's training and validation loss and accuracy at one point of the episode;
    NaN where not measured. Accuracies are fractions."""

    train_loss: float | None
    train_acc: float | None
    val_loss: float
    val_acc: float

    def __post_init__(self):
        check_accuracies(train_acc=self.train_acc, val_acc=self.val_acc)

    @classmethod
    def before_training(cls, val_loss: float, val_acc: float) -> "Numbers":
        """Before any training the training-set numbers are the validation numbers."""
        return cls(val_loss, val_acc, val_loss, val_acc)


class EpisodeRecord:
    """What an episode did so far. `now` holds the latest numbers and `history` the
    earlier ones, oldest first."""

    def __init__(self, plane, start: Numbers):
        self.now = start
        self.history: list[Numbers] = []
        self.initial_val_acc = start.val_acc
        self.rewards: list[RewardBreakdown] = []
        self.ops: Counter = Counter()
        self.timeline: list[dict] = [timeline_row(plane)]
        self.images = 0
        self.train_seconds = 0.0
        self.train_flops: int | None = 0  # None once a step's FLOPs are unknown

    def add_step(self, numbers: Numbers, reward: RewardBreakdown, slots: dict, images: int, seconds: float, flops: int | None) -> None:
        self.history.append(self.now)
        self.now = numbers
        self.rewards.append(reward)
        self.timeline.append(slots)
        self.images += images
        self.train_seconds += seconds
        self.train_flops = None if flops is None or self.train_flops is None else self.train_flops + flops

    def signals(self, decision: int, total_decisions: int, host_params: int, total_params: int, **run) -> TrainingSignals:
        """The signals at `decision`; `run` holds what the run knows of itself
        (decisions_per_epoch, classes, param_budget: see TrainingSignals)."""
        h = self.history
        return TrainingSignals(
            decision=decision,
            total_decisions=total_decisions,
            **vars(self.now),
            host_params=host_params,
            total_params=total_params,
            train_loss_history=[n.train_loss for n in h],
            train_acc_history=[n.train_acc for n in h],
            val_loss_history=[n.val_loss for n in h],
            val_acc_history=[n.val_acc for n in h],
            **run,
        )

    def summary(self, plane, params: int, host_params: int, host_flops_per_image: float | None = None) -> EpisodeSummary:
        components = {k: sum(r.as_dict()[k] for r in self.rewards) for k in RewardBreakdown.__dataclass_fields__}
        slots = plane.slots.values()
        fossils = [s.blueprint for s in slots if s.stage is SeedStage.FOSSILIZED]
        return EpisodeSummary(
            episode_return=sum(r.total for r in self.rewards),
            reward=components,
            initial_val_acc=self.initial_val_acc,
            val_acc=self.now.val_acc,
            val_loss=self.now.val_loss,
            best_val_acc=max([n.val_acc for n in self.history] + [self.now.val_acc]),
            train_acc=self.now.train_acc,
            ops={op.name: self.ops.get(op.name, 0) for op in Op},
            germinated=self.ops.get("GERMINATE", 0),
            fossilized=len(fossils),
            fossil_blueprints=fossils,
            culled=sum(e.op is Op.CULL for e in plane.edits),  # the policy's and the plane's own (non-finite seeds)
            live_at_end=sum(s.stage in ACTIVE_STAGES for s in slots),
            params=params,
            host_params=host_params,
            images=self.images,
            train_seconds=self.train_seconds,
            train_flops=self.train_flops,
            host_flops_per_image=host_flops_per_image,
            timeline=self.timeline,
        )
