"""Ranks: growing one host, or training Tamiyo, across the processes `torchrun` starts.

    torchrun --nproc_per_node 2 -m esper grow ...      # every rank trains a shard of each batch

torch.distributed carries everything (gloo on the CPU, NCCL on CUDA); esper adds what a
graph that changes while it trains needs:

    decided_on_main(choose)   rank 0 decides; its edits are broadcast and every rank
                              applies the same ones, so every rank holds the same graph
    check_in_step(mm)         each tick, every rank's hash of the edit log, the parameter
                              and buffer shapes and a checksum of their values is compared
                              with rank 0's; a mismatch ends the run naming the ranks
    DataParallelHost          DistributedDataParallel over the instrumented model, built
                              again whenever an edit changes the parameter set
    shard(x, y)               a rank's rows of a global batch, and the loss weight that
                              makes DDP's average the mean over the global batch

Collectives time out (`timeout` at start, default 10 minutes) and a failure is raised as
DistributedError, so a rank that dies ends the job with a message, never a hang.
"""

from __future__ import annotations

import hashlib
import os
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Callable

import torch
import torch.distributed as dist

from esper.leyline import DistributedError, SeedStage

# Stages whose slot returns the host's activation untouched while training.
_IDLE = (SeedStage.DORMANT, SeedStage.GERMINATED, SeedStage.CULLED)


@dataclass(frozen=True)
class Ranks:
    """This process's place in the job; `Ranks()` is a run on one process."""

    rank: int = 0
    world_size: int = 1
    timeout: float = 600.0  # seconds a collective waits for the other ranks

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def spread(self) -> bool:
        return self.world_size > 1


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def current() -> Ranks:
    """The process group torch.distributed already has (one a user's own loop started),
    as Ranks; `Ranks()` when there is none."""
    if not (dist.is_available() and dist.is_initialized()):
        return Ranks()
    return Ranks(dist.get_rank(), dist.get_world_size())


def share_parameters(module: torch.nn.Module, ranks: Ranks) -> None:
    """Rank 0's parameter values on every rank (a seed just germinated from each rank's own RNG)."""
    if ranks.spread:
        for p in module.parameters():
            collective(ranks, "sharing rank 0's new seed weights", lambda p=p: dist.broadcast(p.data, src=0))


def mean_over_ranks(values: list[float], ranks: Ranks) -> list[float]:
    """The mean of each value over the ranks (NaN anywhere stays NaN)."""
    if not ranks.spread:
        return values
    total = sum_over_ranks(torch.tensor(values, dtype=torch.float64), ranks)
    return (total / ranks.world_size).tolist()


def start(device: str | torch.device, timeout: float = 600.0) -> tuple[Ranks, torch.device]:
    """Join the job torchrun describes in the environment (RANK, WORLD_SIZE, LOCAL_RANK,
    MASTER_ADDR, MASTER_PORT): gloo on the CPU, NCCL on CUDA, one GPU per local rank.
    Without torchrun, `Ranks()` and `device` unchanged."""
    device = torch.device(device)
    if not launched_by_torchrun():
        return Ranks(), device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        try:
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=timedelta(seconds=timeout))
        except Exception as e:
            raise DistributedError(
                f"cannot join the torchrun job ({type(e).__name__}: {e}); check MASTER_ADDR/MASTER_PORT "
                "and that every rank was started with the same --nnodes and --nproc-per-node"
            ) from e
    return Ranks(dist.get_rank(), dist.get_world_size(), timeout), device


def stop() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


@contextmanager
def main_first(ranks: Ranks):
    """Rank 0 runs the block first (a dataset download or decode fills the cache), then the
    others, which find it there."""
    if ranks.spread and not ranks.main:
        collective(ranks, "waiting for rank 0 to prepare the data", dist.barrier)
    yield
    if ranks.spread and ranks.main:
        collective(ranks, "waiting for rank 0 to prepare the data", dist.barrier)


# What torch raises, typed, when communication fails: NCCL's errors and timeouts, the store's
# and the network's. DistError is the base of the others (torch 2.11 and 2.14 alike); each is
# looked up by name so that a build without one still imports.
_DIST_ERRORS = tuple(
    t
    for t in (getattr(dist, n, None) for n in ("DistError", "DistBackendError", "DistNetworkError", "DistStoreError"))
    if isinstance(t, type)
)
# gloo raises a plain RuntimeError when a peer is gone or a collective times out ("Connection
# closed by peer", "Timed out waiting 5000ms for recv", "Application timeout caused pair
# closure"): its text is the only way to tell it from a training step's own RuntimeError.
_GLOO_WORDS = ("gloo", "timed out", "timeout", "connection", "peer", "closed", "socket")


def is_transport_failure(e: BaseException) -> bool:
    """Whether `e` says the ranks could not communicate (rather than that the work failed)."""
    if isinstance(e, _DIST_ERRORS):
        return True
    text = str(e).lower()
    return isinstance(e, RuntimeError) and any(w in text for w in _GLOO_WORDS)


def collective(ranks: Ranks, what: str, fn: Callable[[], Any], *, only_transport: bool = False, why: str = "") -> Any:
    """`fn()`, with its communication failures raised as DistributedError saying `what`
    failed and why that usually happens (`why`, or a rank that stopped). With
    `only_transport`, other errors of `fn` (a training step's own) pass through unchanged."""
    try:
        return fn()
    except DistributedError:
        raise
    except Exception as e:
        if only_transport and not is_transport_failure(e):
            raise
        text = " ".join(str(e).split())
        why = why or f"another rank stopped or did not answer within {ranks.timeout:.0f} s"
        raise DistributedError(f"rank {ranks.rank} of {ranks.world_size}: {what} failed: {why} ({type(e).__name__}: {text[:300]})") from e


def broadcast(obj: Any, ranks: Ranks, what: str = "a broadcast from rank 0") -> Any:
    """Rank 0's `obj` on every rank (any picklable object)."""
    if not ranks.spread:
        return obj
    box = [obj if ranks.main else None]
    collective(ranks, what, lambda: dist.broadcast_object_list(box, src=0))
    return box[0]


def gather(obj: Any, ranks: Ranks, what: str = "a gather to rank 0") -> list[Any] | None:
    """Every rank's `obj`, in rank order, on rank 0; None elsewhere. (Through
    all_gather_object: gather_object is not supported by every NCCL build.)"""
    gathered = all_gather(obj, ranks, what)
    return gathered if ranks.main else None


def all_gather(obj: Any, ranks: Ranks, what: str) -> list[Any]:
    if not ranks.spread:
        return [obj]
    out: list[Any] = [None] * ranks.world_size
    collective(ranks, what, lambda: dist.all_gather_object(out, obj))
    return out


def sum_over_ranks(values: torch.Tensor, ranks: Ranks) -> torch.Tensor:
    """`values` summed over every rank (in place, on their device)."""
    if ranks.spread:
        collective(ranks, "summing metrics over the ranks", lambda: dist.all_reduce(values, op=dist.ReduceOp.SUM))
    return values


def shard(x: torch.Tensor, y: torch.Tensor, ranks: Ranks) -> tuple[torch.Tensor, torch.Tensor, float]:
    """This rank's contiguous rows of a global batch, and the weight of its mean loss:
    rows_here * world_size / rows, so that DDP's gradient average is the gradient of
    the global batch's mean loss whatever the split."""
    rows = len(y)
    start, end = rows * ranks.rank // ranks.world_size, rows * (ranks.rank + 1) // ranks.world_size
    return x[start:end], y[start:end], (end - start) * ranks.world_size / rows


def sync_buffers(mm: torch.nn.Module, ranks: Ranks) -> None:
    """Rank 0's buffers (BatchNorm's running statistics) on every rank: each rank updated
    its own from its shard, and evaluation must see one model."""
    if ranks.spread:
        for buffer in mm.buffers():
            collective(ranks, "sharing rank 0's buffers", lambda b=buffer: dist.broadcast(b, src=0))


def guard_on_all_ranks(plane, ranks: Ranks) -> list[str]:
    """`plane.guard()` for a job: a seed whose output or gradients were not finite on any
    rank is culled on every rank (the plane must have `defer_culls` set, so that no rank
    culls on its own during the forward pass). Returns the culled slots."""
    if not ranks.spread:
        return plane.guard()
    live, health = plane.health()
    if not live:  # the same on every rank: their stages agree
        return []
    verdict = health.to(torch.int32)
    collective(ranks, "sharing the seeds' health", lambda: dist.all_reduce(verdict, op=dist.ReduceOp.MIN))
    return plane.cull_unhealthy(live, verdict.bool().tolist())


def _has_idle_parameters(slot) -> bool:
    """Whether `slot` holds parameters that this stage's forward pass leaves without gradients."""
    if slot.stage in _IDLE:
        return any(True for _ in slot.seed_parameters())
    return slot.stage is SeedStage.TRAINING and slot.blend is not None and any(True for _ in slot.blend.parameters())


class DataParallelHost:
    """The model a training step runs: `mm` itself on one process; under torchrun a
    DistributedDataParallel wrapper, rebuilt when a germination, fossilization or cull
    changes which parameters train, or a seed starts or stops taking part in the forward
    pass (every rank applies the same edits at the same step, so every rank rebuilds
    together; building it broadcasts rank 0's weights)."""

    def __init__(self, mm: torch.nn.Module, ranks: Ranks):
        self.mm, self.ranks = mm, ranks
        self._ddp: torch.nn.Module | None = None
        self._key: tuple = ()

    def __call__(self) -> torch.nn.Module:
        if not self.ranks.spread:
            return self.mm
        trained = tuple(id(p) for p in self.mm.parameters() if p.requires_grad)
        # A germinated seed takes no part in the forward pass until it trains, nor a learned
        # blend gate until it blends: DDP must be told to look for parameters without
        # gradients (a graph traversal per step) only then.
        idle = any(_has_idle_parameters(s) for s in self.mm.plane.slots.values())
        if self._ddp is None or (trained, idle) != self._key:
            from torch.nn.parallel import DistributedDataParallel

            self._ddp = None  # the old wrapper's gradient hooks go with it
            self._ddp = collective(
                self.ranks,
                "rebuilding DistributedDataParallel after an edit",
                lambda: DistributedDataParallel(self.mm, find_unused_parameters=idle),
                why="the ranks hold different models (every rank must apply rank 0's edits), or another rank stopped",
            )
            self._key = (trained, idle)
        return self._ddp


def fingerprint(mm: torch.nn.Module) -> tuple[str, str, str]:
    """Hashes of the edit log, of the parameter and buffer names and shapes, and of their
    values' checksum (each tensor's sum and sum of squares, in float64: cheap each tick,
    and any divergence of training moves them)."""
    edits = hashlib.sha256(repr([e.to_dict() for e in mm.plane.edits]).encode()).hexdigest()[:16]
    tensors = list(mm.named_parameters()) + list(mm.named_buffers())
    shapes = hashlib.sha256(repr([(n, tuple(t.shape)) for n, t in tensors]).encode()).hexdigest()[:16]
    with torch.no_grad():
        sums = (
            torch.stack([torch.stack([v.sum(), v.square().sum()]) for v in (t.detach().double() for _, t in tensors)])
            if tensors
            else torch.zeros(1)
        )
    values = hashlib.sha256(sums.cpu().numpy().tobytes()).hexdigest()[:16]
    return edits, shapes, values


def check_in_step(mm: torch.nn.Module, ranks: Ranks) -> None:
    """Every rank holds rank 0's graph, stages and parameters, or DistributedError names
    the ranks that do not and what differs."""
    if not ranks.spread:
        return
    prints = all_gather(fingerprint(mm), ranks, "comparing the ranks' models")
    parts = ("edit log", "parameter and buffer shapes", "parameter and buffer values")
    for i, part in enumerate(parts):
        differ = [r for r, p in enumerate(prints) if p[i] != prints[0][i]]
        if differ:
            raise DistributedError(
                f"at tick {mm.plane.ticks} the {part} of rank(s) {differ} differ from rank 0's: "
                "every rank must apply the same edits to the same model"
            )


def decided_on_main(choose: Callable, ranks: Ranks) -> Callable:
    """A chooser whose decisions are made on rank 0 only and broadcast: every rank gets
    rank 0's Choice."""
    if not ranks.spread:
        return choose
    return lambda observations: broadcast(choose(observations) if ranks.main else None, ranks, "sharing rank 0's decision")
