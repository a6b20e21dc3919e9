"""K environments in lockstep: one batched policy call per decision, throughput measured.

    venv = VectorEnv([GrowthEnv(...) for _ in range(K)])
    rollout = run_episodes(venv, seeds, chooser)      # chooser: list[Observation] -> Choice

Every decision calls `chooser` once with all K observations, so a network policy runs
one batched forward pass (`batch_observations` pads to the largest slot count). All
episodes have the same number of decisions, so the environments stay in lockstep and
end together.

Two runners keep `step`'s contract (K edits in, K StepResults out, each environment
left as `GrowthEnv.step` would leave it):

    sequential  the K environments' steps one after another
    batched     the K hosts' training chunks as one vmapped model (`batched.py`)
    auto        batched on CUDA when the environments allow it, else sequential

`auto` follows `tools/bench_envs.py`: on the CPU, vmap's grouped convolutions are
slower than K separate ones, so batching pays only on a GPU.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

from esper.leyline import Edit, EpisodeSummary, Observation, batch_observations
from esper.simic.batched import StackCache, batching_problem, step_together
from esper.simic.env import GrowthEnv, StepResult
from esper.tamiyo import Action, ActionSample, TamiyoPolicy


@dataclass
class Choice:
    """What a policy chose for K observations: the edits, and what a learner may need."""

    edits: list[Edit]
    actions: list[Action] | None = None  # the index actions (heuristic, random): behaviour-cloning targets
    sample: ActionSample | None = None  # Tamiyo's sample, with log-probabilities and values: for PPO


Chooser = Callable[[list[Observation]], Choice]
RUNNERS = ("sequential", "batched", "auto")


class VectorEnv:
    def __init__(self, envs: Sequence[GrowthEnv], runner: str = "sequential"):
        if not envs:
            raise ValueError("a VectorEnv needs at least one environment")
        if runner not in RUNNERS:
            raise ValueError(f"runner must be one of {', '.join(RUNNERS)}, got {runner!r}")
        decisions = {env.cfg.decisions for env in envs}
        if len(decisions) != 1:
            raise ValueError(f"environments in lockstep need the same number of decisions, got {sorted(decisions)}")
        self.envs = list(envs)
        self.runner = runner
        self.batched = False  # decided at reset, once the hosts exist
        self.images = 0
        self.host_seconds = 0.0

    @property
    def num_envs(self) -> int:
        return len(self.envs)

    def reset(self, seeds: Sequence[int]) -> list[Observation]:
        if len(seeds) != self.num_envs:
            raise ValueError(f"need {self.num_envs} seeds, got {len(seeds)}")
        observations = [env.reset(seed) for env, seed in zip(self.envs, seeds)]
        self.batched = self._choose_batched()
        self.cache = StackCache()  # the batched runner's stacked hosts, kept until an edit changes the structure
        return observations

    def _choose_batched(self) -> bool:
        if self.runner == "sequential":
            return False
        problem = batching_problem(self.envs)
        if self.runner == "batched" and problem:
            raise ValueError(f"the batched runner cannot train these environments together: {problem}")
        return problem is None and (self.runner == "batched" or (self.envs[0].device.type == "cuda" and self.num_envs > 1))

    def step(self, edits: Sequence[Edit]) -> list[StepResult]:
        if len(edits) != self.num_envs:
            raise ValueError(f"need {self.num_envs} edits, got {len(edits)}")
        start = time.perf_counter()
        if self.batched:
            results = step_together(self.envs, edits, self.cache)
        else:
            results = [env.step(edit) for env, edit in zip(self.envs, edits)]
        self.host_seconds += time.perf_counter() - start
        self.images += sum(r.info.images for r in results)
        return results


@dataclass
class Decision:
    """One lockstep decision: what every environment saw, chose and got."""

    observations: list[Observation]
    choice: Choice
    results: list[StepResult]

    @property
    def edits(self) -> list[Edit]:
        return self.choice.edits

    @property
    def rewards(self) -> list[float]:
        return [r.reward.total for r in self.results]

    @property
    def dones(self) -> list[bool]:
        return [r.done for r in self.results]


@dataclass
class Rollout:
    decisions: list[Decision]
    summaries: list[EpisodeSummary]  # one per environment
    throughput: dict[str, float] = field(default_factory=dict)


def merge_rollouts(parts: list[Rollout]) -> Rollout:
    """Rollouts of the same length side by side, as if one VectorEnv had run all their
    environments (in order): how rank 0 sees the rollouts every rank gathered to it.
    Throughput is the whole job's: images and decisions summed over the slowest wall time."""
    if len(parts) == 1:
        return parts[0]
    if len({len(p.decisions) for p in parts}) != 1:
        raise ValueError("rollouts merged side by side need the same number of decisions")
    decisions = []
    for steps in zip(*(p.decisions for p in parts)):
        actions = [a for d in steps for a in d.choice.actions] if all(d.choice.actions is not None for d in steps) else None
        sample = ActionSample.cat([d.choice.sample for d in steps]) if all(d.choice.sample is not None for d in steps) else None
        choice = Choice([e for d in steps for e in d.edits], actions, sample)
        decisions.append(Decision([o for d in steps for o in d.observations], choice, [r for d in steps for r in d.results]))
    tp = [p.throughput for p in parts]
    wall = max(t["wall_seconds"] for t in tp)
    images = sum(t["images"] for t in tp)
    made = sum(len(p.decisions) * len(p.summaries) for p in parts)
    throughput = {
        "wall_seconds": wall,
        "host_seconds": sum(t["host_seconds"] for t in tp),
        "policy_seconds": sum(t["policy_seconds"] for t in tp),
        "images": images,
        "images_per_second": images / wall if wall > 0 else 0.0,
        "decisions_per_second": made / wall if wall > 0 else 0.0,
        "policy_calls": sum(t["policy_calls"] for t in tp),
        "processes": len(parts),
    }
    return Rollout(decisions, [s for p in parts for s in p.summaries], throughput)


def run_episodes(venv: VectorEnv, seeds: Sequence[int], choose: Chooser, on_decision: Callable[[Decision], None] | None = None) -> Rollout:
    """Play one episode in every environment, calling `choose` once per decision
    (and `on_decision`, if given, after each one, e.g. to log it as it happens)."""
    images_before, host_before = venv.images, venv.host_seconds
    start = time.perf_counter()
    observations = venv.reset(seeds)
    policy_seconds = 0.0
    decisions = []
    while True:
        tick = time.perf_counter()
        choice = choose(observations)
        policy_seconds += time.perf_counter() - tick
        if len(choice.edits) != venv.num_envs:
            raise ValueError(f"the policy returned {len(choice.edits)} edits for {venv.num_envs} environments")
        results = venv.step(choice.edits)
        decisions.append(Decision(observations, choice, results))
        if on_decision is not None:
            on_decision(decisions[-1])
        dones = [r.done for r in results]
        if any(dones):
            if not all(dones):
                raise RuntimeError("environments fell out of lockstep")
            break
        observations = [r.observation for r in results]
    wall = time.perf_counter() - start
    images = venv.images - images_before
    host = venv.host_seconds - host_before
    throughput = {
        "wall_seconds": wall,
        "host_seconds": host,
        "policy_seconds": policy_seconds,
        "images": images,
        "images_per_second": images / wall if wall > 0 else 0.0,
        "decisions_per_second": len(decisions) * venv.num_envs / wall if wall > 0 else 0.0,
        "policy_calls": len(decisions),
    }
    return Rollout(decisions, [env.summary() for env in venv.envs], throughput)


def grow_once(env: GrowthEnv, seed: int, choose: Chooser, test=None, on_decision: Callable[[Decision], None] | None = None) -> dict:
    """One episode of one environment, as a grow run records it (summary.json): the
    episode's summary, wall time and throughput, and the loss and accuracy on `test` (a
    TensorData split) when given."""
    start = time.perf_counter()
    rollout = run_episodes(VectorEnv([env]), [seed], choose, on_decision)
    summary = rollout.summaries[0].to_dict()
    if test is not None:
        summary["test_loss"], summary["test_acc"] = env.evaluate(test)
    summary["wall_seconds"] = time.perf_counter() - start
    summary["throughput"] = rollout.throughput
    return summary


# ---- choosers: one call per decision for every kind of policy ---------------------------------
def decide_with(policy) -> Chooser:
    """Any policy with `decide(observations) -> edits` (heuristic, random, Tamiyo greedy)."""
    return lambda observations: Choice(list(policy.decide(observations)))


def choose_with_actions(policy) -> Chooser:
    """A policy with `choose(observations) -> actions` (heuristic, random): the index
    actions come back with the edits, e.g. as behaviour-cloning targets."""

    def choose(observations):
        actions = policy.choose(observations)
        return Choice([policy.vocab.to_edit(a, o) for a, o in zip(actions, observations)], actions=actions)

    return choose


def sample_with(policy: TamiyoPolicy, deterministic: bool = False) -> Chooser:
    """Tamiyo: one batched `act` per decision; the ActionSample comes back for PPO."""

    def choose(observations) -> Choice:
        sample = policy.act(batch_observations(observations), deterministic=deterministic)
        return Choice([policy.vocab.to_edit(sample.row(i), obs) for i, obs in enumerate(observations)], sample=sample)

    return choose


def place_data(splits, device: str | torch.device, budget: float = 0.5):
    """The K environments share one copy of the data: moved whole onto `device` when it
    takes less than `budget` of the device's free memory, else left where it is (each
    batch is then copied over as it is used). Returns the splits and where they live."""
    device = torch.device(device)
    if device.type != "cuda":
        return splits, splits.train.x.device
    size = sum(t.numel() * t.element_size() for part in (splits.train, splits.val, splits.test) for t in (part.x, part.y))
    free, _ = torch.cuda.mem_get_info(device)
    if size > budget * free:
        return splits, splits.train.x.device
    moved = dataclasses.replace(splits, train=splits.train.to(device), val=splits.val.to(device), test=splits.test.to(device))
    return moved, device
