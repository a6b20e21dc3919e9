"""StepInfo and EpisodeSummary: one growth step and one growth episode in numbers, as
every runner, log and report reads them."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from esper.leyline.edits import Edit


@dataclass
class StepInfo:
    """What one environment step did and measured (after its tick). Accuracies are fractions."""

    step: int  # decisions taken so far in the episode, this one included
    epoch: float  # epochs trained so far
    edit: Edit  # as the plane logged it
    train_loss: float  # of this step's training chunk
    train_acc: float
    val_loss: float
    val_acc: float
    contributions: dict[str, float]  # slot -> accuracy it adds (blending seeds and fossils)
    reward: dict[str, float]  # the step reward by component, and its total
    params: int
    host_params: int
    slots: dict[str, list]  # slot -> [stage, alpha, blueprint]: one timeline row
    images: int  # training examples this step
    train_seconds: float
    # Forward and backward FLOPs of this step's training (esper.simic.flops); None where
    # the loop that trained it did not count them (a Gardener in a user's own loop).
    train_flops: int | None = None

    def to_dict(self) -> dict:
        """The per-step record of metrics.jsonl."""
        return {**asdict(self), "edit": self.edit.to_dict()}


@dataclass
class EpisodeSummary:
    episode_return: float  # the sum of the step rewards ("return" in the records)
    reward: dict[str, float]  # the return by reward component
    initial_val_acc: float  # validation accuracy before any training
    val_acc: float  # at the end of the episode
    val_loss: float
    best_val_acc: float
    train_acc: float
    ops: dict[str, int]  # edits applied, by op name
    germinated: int
    fossilized: int  # seeds fossilized at the end
    fossil_blueprints: list[str]
    culled: int  # by the policy or for non-finite values
    live_at_end: int  # seeds germinated, training or blending when the episode ended
    params: int
    host_params: int
    images: int  # training examples seen
    train_seconds: float
    train_flops: int | None = None  # forward and backward, all steps (None: some step's are unknown)
    host_flops_per_image: float | None = None  # the host alone (no seed, no fossil), per training example
    timeline: list[dict] = field(default_factory=list)  # every slot's stage after each step

    @property
    def param_ratio(self) -> float:
        """Parameters added, as a fraction of the host's."""
        return self.params / self.host_params - 1.0

    @property
    def host_train_flops(self) -> int | None:
        """What training the host alone on the same examples would have cost, in FLOPs."""
        return None if self.host_flops_per_image is None else round(self.host_flops_per_image * self.images)

    def to_dict(self) -> dict:
        """The record written to metrics.jsonl and summary.json."""
        record = asdict(self)
        record["return"] = record.pop("episode_return")
        record["param_ratio"] = self.param_ratio
        record["host_train_flops"] = self.host_train_flops
        return record
