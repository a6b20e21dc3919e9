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

One `step` is one of Simic's decisions, taken in Simic's order so that a trained Tamiyo
sees what it saw in training: the plane ticks (closing the epoch just trained), each
BLENDING seed's contribution is measured on the probe, the observation is built from the
slots' telemetry and the metrics given (`esper.simic.features`), the policy decides, and
`plane.apply` performs the edit, which opens the next epoch. Edits are logged at the tick
count, which is the number of epochs trained, as in `esper grow`.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from functools import partial
from pathlib import Path
from typing import Callable

import torch

from esper.simic.schedules import SeedGroups
from esper.kasmina.blending import blend_names
from esper.kasmina.blueprints import blueprint_ranks, registered_names
from esper.kasmina.model import MorphogeneticModel
from esper.leyline import Edit, Observation, SeedStage, Vocabulary, edits_to_yaml
from esper.runs.metrics import JSONL_NAME, clean, write_jsonl_atomic
from esper.runs.report import make_report, timeline_row
from esper.simic.baselines import WaitPolicy
from esper.simic.distributed import (
    DataParallelHost,
    Ranks,
    broadcast,
    check_in_step,
    current,
    guard_on_all_ranks,
    mean_over_ranks,
    share_parameters,
    sync_buffers,
)
from esper.simic.features import TrainingSignals, build_observation
from esper.simic.host_training import EnvConfig, probe_accuracy, seed_contributions
from esper.simic.train_files import load_policy
from esper.tamiyo import HeuristicPolicy, RandomPolicy

BUILT_IN = ("heuristic", "random", "wait")
METRICS = ("train_loss", "train_acc", "val_loss", "val_acc")


def find_instrumented(module: torch.nn.Module) -> MorphogeneticModel:
    """The one MorphogeneticModel that is `module` or inside it (a trainer's wrapper)."""
    found = [m for m in module.modules() if isinstance(m, MorphogeneticModel)]
    if len(found) != 1:
        raise ValueError(
            f"expected one instrumented model (esper.instrument(model, example_inputs)) in {type(module).__name__}, "
            f"found {len(found)}"
        )
    return found[0]


def _policy(policy, blueprints, blends, blend_steps: int, seed: int | None) -> tuple[object, Vocabulary]:
    """(policy, its vocabulary) for a built-in name, a tamiyo.pt path or an object."""
    if isinstance(policy, (str, Path)) and str(policy) not in BUILT_IN:
        path = Path(policy)
        if not path.is_file():
            raise ValueError(f"policy {str(policy)!r} is neither one of {', '.join(BUILT_IN)} nor a file")
        if blueprints is not None or blends is not None:
            raise ValueError("a trained policy brings its own blueprints and blends")
        trained, _ = load_policy(path)  # weights only: never unpickles code
        return trained, trained.vocab
    vocab = Vocabulary(*registered_names(blueprints, blends), blend_steps)
    if policy == "heuristic":
        return HeuristicPolicy(vocab), vocab
    if policy == "random":
        return RandomPolicy(vocab, seed=seed), vocab
    if policy == "wait":
        return WaitPolicy(), vocab
    if not callable(getattr(policy, "decide", None)):
        raise TypeError(f"a policy needs decide(observations) -> edits; got {type(policy).__name__}")
    return policy, getattr(policy, "vocab", None) or vocab


def _number(value) -> float:
    """A metric as a float; None (not measured) reads as NaN, which the features mark unknown."""
    if value is None:
        return math.nan
    return float(value.item() if isinstance(value, torch.Tensor) else value)


class Gardener:
    """Grows `model` (an instrumented MorphogeneticModel) in a loop you own.

    policy: "heuristic", "random", "wait", a path to a `tamiyo.pt` from `esper train`,
    or any object with `decide(observations) -> edits`. optimizer: the optimizer that
    trains `model`; germinated seeds join it as parameter groups and leave it when culled.
    scheduler: your learning-rate scheduler(s), if any, kept working as groups come and
    go; each seed group runs at `seed_lr_scale` times the first parameter group's
    current learning rate. probe: how a BLENDING seed's contribution is measured, as
    `(x, y)` (classification accuracy of `model(x)` against `y`) or a callable
    `probe(model) -> float` (higher is better; it runs in eval mode without gradients);
    None leaves contributions unknown, and then the heuristic never fossilizes. epochs:
    how many times `step` will be called (the policy sees progress as steps / epochs).
    blend_steps, blueprints, blends: the blend length in ticks and the vocabulary of the
    built-in policies (default: every registered blueprint and blend); a trained policy
    brings its own. seed: the random policy's seed. ranks: the processes of a distributed
    run (default: torch.distributed's process group, if one is up).
    """

    def __init__(
        self,
        model: MorphogeneticModel,
        policy="heuristic",
        *,
        optimizer: torch.optim.Optimizer,
        epochs: int,
        scheduler=None,
        probe: tuple[torch.Tensor, torch.Tensor] | Callable[[MorphogeneticModel], float] | None = None,
        blend_steps: int = EnvConfig.blend_steps,
        blueprints: list[str] | None = None,
        blends: list[str] | None = None,
        seed_lr_scale: float = 1.0,
        seed: int | None = None,
        ranks: Ranks | None = None,
    ):
        if not isinstance(model, MorphogeneticModel):
            raise TypeError(f"Gardener needs an instrumented model: esper.instrument(model, example_inputs), not {type(model).__name__}")
        if epochs < 1:
            raise ValueError(f"epochs must be at least 1, got {epochs}")
        self.model = model
        self.plane = model.plane
        self.epochs = epochs
        self.policy_name = str(policy) if isinstance(policy, (str, Path)) else type(policy).__name__
        self.policy, self.vocab = _policy(policy, blueprints, blends, blend_steps, seed)
        causal = self.plane.causal  # on a causal host only causal-safe seeds are offered
        self.blueprint_ranks, self.usable_blends = blueprint_ranks(causal), blend_names(causal)
        self.ranks = ranks or current()
        self.plane.defer_culls = self.ranks.spread
        self.score = self._scorer(probe)
        self.plane.attach_optimizer(optimizer)
        self.groups = SeedGroups(optimizer, scheduler, seed_lr_scale)
        self.groups.sync()
        self.host_params = model.host_parameter_count()
        self.history: dict[str, list[float]] = {k: [] for k in METRICS}
        self.contributions: dict[str, float] = {}
        self._frozen: dict[str, float] = {}
        self.records: list[dict] = []
        self.timeline: list[dict] = [timeline_row(self.plane)]
        self.epoch = 0

    def _scorer(self, probe) -> Callable[[], float] | None:
        if probe is None:
            return None
        if callable(probe):
            return lambda: float(probe(self.model))
        if not (isinstance(probe, (tuple, list)) and len(probe) == 2 and all(isinstance(t, torch.Tensor) for t in probe)):
            raise TypeError("probe must be (x, y) tensors, a callable probe(model) -> float, or None")
        return partial(probe_accuracy, self.model, *probe)

    def data_parallel(self) -> DataParallelHost:
        """`host()` is the module to train with: the model itself on one process, else a
        DistributedDataParallel wrapper of it, rebuilt after an edit changes its parameters."""
        return DataParallelHost(self.model, self.ranks)

    @property
    def edits(self) -> list[Edit]:
        """The plane's edit log (every decision, WAITs and automatic culls included): replays with esper.replay."""
        return list(self.plane.edits)

    def total_params(self) -> int:
        """Parameters of the model now: the host's and every live or fossilized seed's."""
        return sum(p.numel() for p in self.model.parameters())

    def after_backward(self) -> list[str]:
        """Call after `loss.backward()`, before `optimizer.step()`: culls seeds whose gradients
        are not finite (`plane.guard`, returning their slots) and sets the seed groups'
        learning rates from the schedule."""
        culled = guard_on_all_ranks(self.plane, self.ranks)
        self.groups.sync()
        return culled

    def _observe(self, signals: TrainingSignals) -> Observation:
        telemetry = [slot.telemetry() for slot in self.plane.slots.values()]
        return build_observation(telemetry, signals, self.contributions, self.vocab.blueprints, self.blueprint_ranks, self.vocab.blends,
                                 usable_blends=self.usable_blends)

    def step(self, train_loss=None, train_acc=None, val_loss=None, val_acc=None) -> Edit:
        """End of an epoch: tick, measure, observe, decide, apply. Metrics are floats or
        0-d tensors, accuracies as fractions; leave out what your task does not have.
        Returns the edit as logged by the plane."""
        values = mean_over_ranks([_number(v) for v in (train_loss, train_acc, val_loss, val_acc)], self.ranks)
        metrics = dict(zip(METRICS, values))
        signals = TrainingSignals(  # checks the metrics before anything changes
            decision=self.epoch + 1,
            total_decisions=self.epochs,
            host_params=self.host_params,
            total_params=self.total_params(),
            **metrics,
            **{f"{k}_history": list(v) for k, v in self.history.items()},
        )
        sync_buffers(self.model, self.ranks)
        self.plane.step()
        check_in_step(self.model, self.ranks)
        self.epoch += 1
        self.timeline.append(timeline_row(self.plane))
        if self.score is not None:
            self.contributions = seed_contributions(self.model, self.score, self.contributions, self._frozen)
        edit = self.policy.decide([self._observe(signals)])[0] if self.ranks.main else None
        logged = self.plane.apply(broadcast(edit, self.ranks, "sharing rank 0's decision"))
        share_parameters(self.plane, self.ranks)
        self.groups.sync()
        for key, value in metrics.items():
            self.history[key].append(value)
        self.records.append({
            "run": "grown",
            "step": self.epoch,
            "epoch": self.epoch,
            "edit": logged.to_dict(),
            "edit_at": self.epoch,
            **metrics,
            "contributions": dict(self.contributions),
            "params": self.total_params(),
            "host_params": self.host_params,
            "slots": self.timeline[-1],
        })
        return logged

    def summary(self) -> dict:
        """The run in numbers, as `esper grow` writes them to summary.json."""
        fossils = [s.blueprint for s in self.plane.slots.values() if s.stage is SeedStage.FOSSILIZED]
        ops = Counter(e.op.name for e in self.plane.edits)
        last = self.records[-1] if self.records else {}
        return {
            "policy": self.policy_name,
            "host": type(self.model.host).__name__,
            "epochs": self.epochs,
            "val_acc": last.get("val_acc"),
            "train_acc": last.get("train_acc"),
            "germinated": ops["GERMINATE"],
            "fossilized": len(fossils),
            "fossil_blueprints": fossils,
            "culled": ops["CULL"],
            "params": self.total_params(),
            "host_params": self.host_params,
            "param_ratio": self.total_params() / self.host_params - 1.0,
            "timeline": self.timeline,
        }

    def report(self, out_dir) -> Path | None:
        """Write metrics.jsonl, summary.json, edits.yaml, the plots and report.md of
        `esper grow` into `out_dir` (needs matplotlib: the `report` extra); returns report.md
        (on rank 0; other ranks of a distributed run write nothing and get None)."""
        if not self.records:
            raise RuntimeError("nothing to report yet: call step() at the end of each epoch first")
        if not self.ranks.main:
            return None
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        write_jsonl_atomic(out / JSONL_NAME, [{"kind": "epoch", **r} for r in self.records])
        (out / "summary.json").write_text(json.dumps(clean(self.summary()), indent=2))
        (out / "edits.yaml").write_text(edits_to_yaml(self.edits))
        return make_report(out)
