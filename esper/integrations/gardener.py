"""Gardener: a growth policy deciding and applying edits inside your own training loop.

    mm = esper.instrument(model, example_inputs=(x,))
    opt = torch.optim.AdamW(mm.parameters(), lr=1e-3)
    gardener = esper.Gardener(mm, policy="heuristic", optimizer=opt, probe=(x_val, y_val), epochs=E)
    for epoch in range(E):
        for x, y in loader:
            loss = loss_fn(mm(x), y); opt.zero_grad(); loss.backward()
            gardener.after_backward()
            opt.step()
        gardener.step(train_loss=..., train_acc=..., val_loss=..., val_acc=...)

Under torch.distributed (a process group started by your loop, e.g. under torchrun) every
rank makes the same Gardener: run the model through `gardener.data_parallel()()` (a
DistributedDataParallel wrapper built again after each edit that changes the parameters),
pass each rank's metrics to `step` (they are averaged over the ranks), and call `report`
anywhere: rank 0 decides, every rank applies its edit, and rank 0 alone writes.

The Gardener runs the growth loop of `esper grow` (esper.simic.loop): it takes decision 0
when it is made (before any training, with `initial_metrics` if given), and each `step`
closes the interval just trained with the metrics given (the plane ticks, each BLENDING
seed's contribution is measured on the probe, the reward is counted), then observes,
decides and applies the next decision, which opens the next interval. A trained Tamiyo
therefore sees in your loop what it saw in training, and edits are logged at the same
ticks as in `esper grow`: 0 .. decisions-1. The last `step` only closes.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Callable

import torch

from esper.kasmina.blueprints import registered_names
from esper.kasmina.model import MorphogeneticModel
from esper.leyline import Edit, EpisodeSummary, Observation, StepInfo, Vocabulary
from esper.runs.grow_run import write_grow_run
from esper.simic.distributed import (
    DataParallelHost,
    Ranks,
    broadcast,
    current,
    guard_on_all_ranks,
    mean_over_ranks,
    share_parameters,
    sync_buffers,
)
from esper.simic.episode import Numbers
from esper.simic.host_training import EnvConfig, probe_accuracy, seed_contributions
from esper.simic.loop import GrowthLoop, number
from esper.simic.policies import resolve_policy
from esper.simic.schedules import SeedGroups
from esper.tamiyo import HeuristicConfig

METRICS = ("train_loss", "train_acc", "val_loss", "val_acc")


def find_instrumented(module: torch.nn.Module) -> MorphogeneticModel:
    """The one MorphogeneticModel that is `module` or inside it (a trainer's wrapper)."""
    found = [m for m in module.modules() if isinstance(m, MorphogeneticModel)]
    if len(found) != 1:
        raise ValueError(
            f"expected one instrumented model (esper.instrument(model, example_inputs)) in {type(module).__name__}, found {len(found)}"
        )
    return found[0]


class Gardener:
    """Grows `model` (an instrumented MorphogeneticModel) in a loop you own.

    policy: a built-in policy's name ("heuristic", "random", "wait": esper.tamiyo.registry),
    a path to a `tamiyo.pt` from `esper train`, or any object with `decide(observations) ->
    edits`. optimizer: the optimizer that trains `model`; germinated seeds join it as
    parameter groups and leave it when culled. scheduler: your learning-rate scheduler(s),
    if any, kept working as groups come and go; each seed group runs at `seed_lr_scale`
    times the first parameter group's current learning rate, boosted to start at its peak
    rate with `seed_lr_rule="peak"` (esper.simic.schedules). probe: how a BLENDING seed's
    contribution is measured, as `(x, y)` (classification accuracy of `model(x)` against
    `y`) or a callable `probe(model) -> float` (higher is better; it runs in eval mode
    without gradients); None leaves contributions unknown, and then the heuristic never
    fossilizes. epochs, decisions_per_epoch: how many epochs you train and how many times
    per epoch you call `step` (the policy plans for epochs x decisions_per_epoch
    decisions). initial_metrics: the untrained model's `val_loss` and `val_acc`, seen by
    decision 0 (as `esper grow` measures them before training); unknown if left out.
    blend_steps, blueprints, blends: the blend length in ticks and the vocabulary of the
    built-in policies (default: every registered blueprint and blend); a trained policy
    brings its own. training_ticks: the steps a seed trains in isolation before it blends
    in on its own (None: only the policy advances seeds). heuristic: the heuristic's
    settings. seed: the random policy's seed. ranks: the processes of a distributed run
    (default: torch.distributed's process group, if one is up). compile: run the model's
    training forward passes under torch.compile (`model.compile_training()`: compiled
    again only when an edit changes the model; `model.compiled.summary()` counts it).
    """

    def __init__(
        self,
        model: MorphogeneticModel,
        policy="heuristic",
        *,
        optimizer: torch.optim.Optimizer,
        epochs: int,
        decisions_per_epoch: int = 1,
        scheduler=None,
        probe: tuple[torch.Tensor, torch.Tensor] | Callable[[MorphogeneticModel], float] | None = None,
        initial_metrics: dict | None = None,
        blend_steps: int = EnvConfig.blend_steps,
        training_ticks: int | None = EnvConfig.training_ticks,
        blueprints: list[str] | None = None,
        blends: list[str] | None = None,
        heuristic: HeuristicConfig | None = None,
        seed_lr_scale: float = 1.0,
        seed_lr_rule: str = EnvConfig.seed_lr_rule,
        seed: int | None = None,
        ranks: Ranks | None = None,
        compile: bool = False,
    ):
        if not isinstance(model, MorphogeneticModel):
            raise TypeError(f"Gardener needs an instrumented model: esper.instrument(model, example_inputs), not {type(model).__name__}")
        if epochs < 1 or decisions_per_epoch < 1:
            raise ValueError(f"epochs and decisions_per_epoch must be at least 1, got {epochs}, {decisions_per_epoch}")
        self.model = model
        self.plane = model.plane
        if compile:
            model.compile_training()
        self.epochs = epochs
        self.policy_name = str(policy) if isinstance(policy, (str, Path)) else type(policy).__name__
        if isinstance(policy, (str, Path)) and (blueprints is not None or blends is not None) and Path(policy).is_file():
            raise ValueError("a trained policy brings its own blueprints and blends")
        vocab = Vocabulary(*registered_names(blueprints, blends), blend_steps)
        self.policy, self.vocab, _ = resolve_policy(policy, vocab, heuristic=heuristic, seed=seed)
        self.ranks = ranks or current()
        self.plane.defer_culls = self.ranks.spread
        self.score = self._scorer(probe)
        self.plane.attach_optimizer(optimizer)
        self.groups = SeedGroups(optimizer, scheduler, seed_lr_scale, seed_lr_rule)
        self._frozen: dict[str, float] = {}
        self.loop = GrowthLoop(
            model,
            self.vocab,
            decisions=epochs * decisions_per_epoch,
            decisions_per_epoch=decisions_per_epoch,
            measure=self._measure,
            ranks=self.ranks,
            training_ticks=training_ticks,
        )
        self.records: list[StepInfo] = []
        self.observations: list[Observation] = []  # what the policy saw at each decision
        start = self._numbers(**(initial_metrics or {}))
        self.loop.start(Numbers.before_training(start.val_loss, start.val_acc))
        self._decide()
        self.groups.sync()

    def _scorer(self, probe) -> Callable[[], float] | None:
        if probe is None:
            return None
        if callable(probe):
            return lambda: float(probe(self.model))
        if not (isinstance(probe, (tuple, list)) and len(probe) == 2 and all(isinstance(t, torch.Tensor) for t in probe)):
            raise TypeError("probe must be (x, y) tensors, a callable probe(model) -> float, or None")
        return partial(probe_accuracy, self.model, *probe)

    def _measure(self) -> dict[str, float]:
        if self.score is None:
            return {}
        return seed_contributions(self.model, self.score, self.loop.contributions, self._frozen)

    def _numbers(self, train_loss=None, train_acc=None, val_loss=None, val_acc=None) -> Numbers:
        """The metrics as the loop's Numbers (checked before anything changes), averaged over ranks."""
        values = mean_over_ranks([number(v) for v in (train_loss, train_acc, val_loss, val_acc)], self.ranks)
        return Numbers(*values)

    def data_parallel(self) -> DataParallelHost:
        """`host()` is the module to train with: the model itself on one process, else a
        DistributedDataParallel wrapper of it, rebuilt after an edit changes its parameters."""
        return DataParallelHost(self.model, self.ranks)

    @property
    def edits(self) -> list[Edit]:
        """The plane's edit log (every decision, WAITs and automatic culls included): replays with esper.replay."""
        return list(self.plane.edits)

    @property
    def contributions(self) -> dict[str, float]:
        """Each measured seed's contribution at the last step (slot -> probe score it adds)."""
        return self.loop.contributions

    @property
    def timeline(self) -> list[dict]:
        """Every slot's [stage, alpha, blueprint] at the start and after each step."""
        return self.loop.record.timeline

    @property
    def done(self) -> bool:
        """Every decision was taken and every interval closed."""
        return self.loop.done

    def total_params(self) -> int:
        """Parameters of the model now: the host's and every live or fossilized seed's."""
        return self.loop.total_params()

    def after_backward(self) -> list[str]:
        """Call after `loss.backward()`, before `optimizer.step()`: culls seeds whose gradients
        are not finite (`plane.guard`, returning their slots) and sets the seed groups'
        learning rates from the schedule."""
        culled = guard_on_all_ranks(self.plane, self.ranks)
        self.groups.sync()
        return culled

    def step(self, train_loss=None, train_acc=None, val_loss=None, val_acc=None) -> Edit | None:
        """After each interval you train (an epoch, or 1/decisions_per_epoch of one): close
        it, then observe, decide and apply the next decision. Metrics are floats or 0-d
        tensors, accuracies as fractions; leave out what your task does not have. Returns
        the edit as logged by the plane, or None after the last interval."""
        if self.loop.done:
            raise RuntimeError(
                f"the Gardener planned for {self.loop.decisions} steps (epochs x decisions_per_epoch) "
                "and all were taken: give it the number of epochs you train"
            )
        numbers = self._numbers(train_loss, train_acc, val_loss, val_acc)
        sync_buffers(self.model, self.ranks)
        self.records.append(self.loop.close(numbers))
        edit = None if self.loop.done else self._decide()
        self.groups.sync()  # a scheduler that stepped since the last sync set the seed groups' rates too
        return edit

    def _decide(self) -> Edit:
        observation = self.loop.observe()
        self.observations.append(observation)
        edit = self.policy.decide([observation])[0] if self.ranks.main else None
        logged = self.loop.apply(broadcast(edit, self.ranks, "sharing rank 0's decision"))
        share_parameters(self.plane, self.ranks)
        return logged

    def summary(self) -> EpisodeSummary:
        """The run in numbers, as `esper grow` counts them."""
        return self.loop.summary()

    def save(self, out_dir, report: bool = True) -> Path | None:
        """Write the run as `esper grow` does (esper.runs.grow_run): the model, edits.yaml,
        metrics.jsonl, summary.json, and report.md with its plots (needs matplotlib: the
        `report` extra); returns report.md (on rank 0; other ranks of a distributed run
        write nothing and get None)."""
        if not self.records:
            raise RuntimeError("nothing to save yet: call step() after each interval you train first")
        if not self.ranks.main:
            return None
        summary = {
            **self.summary().to_dict(),
            "policy": self.policy_name,
            "host": type(self.model.host).__name__,
            "epochs": self.epochs,
            "decisions_per_epoch": self.loop.decisions_per_epoch,
        }
        return write_grow_run(
            out_dir,
            summary=summary,
            edits=self.edits,
            model=self.model,
            records=[{"run": "grown", **r.to_dict()} for r in self.records],
            report=report,
        )
