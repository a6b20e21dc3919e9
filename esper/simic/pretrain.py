"""Pretraining Tamiyo across hosts: a clone of the teacher, corrected by PPO on cheap episodes.

    pretrainer = Pretrainer(PretrainConfig(), data)   # data: DataSplits at the proxy's size
    policy = pretrainer.run(log=print)   # pretrainer.history: the clone's and each update's record

1. Clone. The teacher (the heuristic) plays `clone_episodes` episodes spread over the
   hosts; the policy is cloned on its decisions until its greedy agreement reaches the
   target (esper.tamiyo.behaviour_clone).
2. DAgger. `dagger_rounds` times: the clone plays, the teacher labels every state the
   clone visits, and the clone is refitted on all the labels so far, so that it also knows
   what to do in the states its own mistakes lead to.
3. PPO. Every update plays `groups` (host, seed) pairs, `group_size` rollouts each:
   - rewards are read against the seed's host-alone twin (RewardConfig.relative_to_twin),
     so a return is what growth added, not what the host learned by itself;
   - the rollouts of a group share host, initialisation and batch order, so each one's
     baseline is the mean return of the others (leave-one-out), and only the policy's
     choices separate them;
   - a KL penalty to the teacher's action at every visited state, annealed, keeps the
     policy near the rule while PPO finds corrections worth their noise.

Hosts cycle through `cfg.hosts` (esper.simic.host_zoo) so every update sees several
families; seeds come from `episode_seed`, so a run is reproducible.
"""

from __future__ import annotations

import dataclasses
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from esper.kasmina.blueprints import registered_names
from esper.leyline import Vocabulary
from esper.runs import config as config_io
from esper.runs.files import save_atomic
from esper.simic.env import EnvConfig, GrowthEnv
from esper.simic.host_zoo import HOSTS, TRAINING_HOSTS
from esper.simic.rewards import RewardConfig
from esper.simic.train_config import episode_seed
from esper.simic.vectorized import Choice, Rollout, VectorEnv, merge_rollouts, run_episodes, sample_with
from esper.tamiyo import (
    HeuristicConfig,
    ImitationConfig,
    PPOConfig,
    RolloutBuffer,
    TamiyoPolicy,
    agreement,
    behaviour_clone,
    build_policy,
    make_optimizer,
    mean_or_nan,
    ppo_update,
)


def proxy_env() -> EnvConfig:
    """The cheap episode: 6 epochs, two decisions each, so a seed germinated in the first
    quarter blends by mid-run and leaves several decisions to judge it."""
    return EnvConfig(epochs=6, decisions_per_epoch=2, blend_steps=2, batch_size=128, contribution_samples=300, lr=2e-3)


@dataclass
class PretrainConfig:
    """Every setting of a pretraining run."""

    hosts: list[str] = field(default_factory=lambda: list(TRAINING_HOSTS))
    blueprints: list[str] = field(default_factory=list)  # the policy's vocabulary; empty: every registered one
    blends: list[str] = field(default_factory=list)
    env: EnvConfig = field(default_factory=proxy_env)
    # Growth up to the host's own size is free (the evidence benchmark's budget); the twin
    # takes what the host learns by itself out of every return.
    reward: RewardConfig = field(default_factory=lambda: RewardConfig(param_budget=1.0, relative_to_twin=True))
    teacher: HeuristicConfig = field(default_factory=HeuristicConfig.every_slot)  # the evidence benchmark's rule
    hidden: int = 64
    clone_episodes: int = 16
    dagger_rounds: int = 1
    dagger_episodes: int = 16
    imitation: ImitationConfig = field(default_factory=ImitationConfig)
    updates: int = 6
    groups: int = 8  # (host, seed) pairs per update
    group_size: int = 4  # rollouts per pair: leave-one-out baselines need at least 2
    # The teacher's pull, strong while the rollouts say little and weaker as they add up.
    ppo: PPOConfig = field(
        default_factory=lambda: PPOConfig(advantages="loo", teacher_coef=1.0, teacher_coef_final=0.1, teacher_anneal_updates=6)
    )
    seed: int = 0

    def __post_init__(self):
        unknown = [h for h in self.hosts if h not in HOSTS]
        if unknown or not self.hosts:
            raise ValueError(f"unknown hosts {unknown}; the zoo has {sorted(HOSTS)}")
        if self.group_size < 2:
            raise ValueError("leave-one-out baselines need group_size >= 2")

    @property
    def episodes_per_update(self) -> int:
        return self.groups * self.group_size


class Pretrainer:
    """Runs a PretrainConfig on `data` (DataSplits, images at the proxy's size)."""

    def __init__(self, cfg: PretrainConfig, data, device: str = "cpu"):
        self.cfg = cfg
        self.data = data
        blueprints, blends = registered_names(cfg.blueprints, cfg.blends)
        self.vocab = Vocabulary(blueprints, blends, cfg.env.blend_steps)
        self.example = data.train.x[:2]
        # group_size environments per host, sharing one twin cache: a seed's twin runs once.
        self.envs = {}
        self.twins: dict[str, dict[int, list[float]]] = {}  # host -> its environments' shared twin cache
        for name in cfg.hosts:
            twins = self.twins[name] = {}
            self.envs[name] = [
                GrowthEnv(
                    lambda name=name: HOSTS[name](data.num_classes),
                    data,
                    cfg.env,
                    cfg.reward,
                    blueprints=blueprints,
                    blends=blends,
                    device=device,
                    example_input=self.example,
                    twin_cache=twins,
                )
                for _ in range(cfg.group_size)
            ]
        torch.manual_seed(cfg.seed)
        self.policy = TamiyoPolicy(self.vocab, hidden=cfg.hidden)
        self.history: list[dict] = []
        self._pair = 0  # (host, seed) pairs handed out so far

    def _next_pair(self) -> tuple[str, int]:
        host = self.cfg.hosts[self._pair % len(self.cfg.hosts)]
        seed = episode_seed(self.cfg.seed, "pretrain", self._pair)
        self._pair += 1
        return host, seed

    def _play(self, host: str, seed: int, k: int, act: Callable | None) -> tuple[Rollout, list[list]]:
        """k rollouts of `host` on `seed` with `act` (None: the teacher itself), and the
        teacher's action at every state."""
        teacher = build_policy("heuristic", self.vocab, heuristic=self.cfg.teacher)
        labels: list[list] = []

        def choose(observations) -> Choice:
            labels.append(teacher.choose(observations))
            if act is None:
                return Choice([self.vocab.to_edit(a, o) for a, o in zip(labels[-1], observations)], actions=labels[-1])
            return act(observations)

        rollout = run_episodes(VectorEnv(self.envs[host][:k]), [seed] * k, choose)
        return rollout, labels

    def _teach(self, episodes: int, act: Callable | None, pairs: list) -> None:
        """Play `episodes` one environment at a time with `act` (None: the teacher itself) and
        keep (state, teacher action) pairs."""
        for _ in range(episodes):
            host, seed = self._next_pair()
            rollout, labels = self._play(host, seed, 1, act)
            for decision, label in zip(rollout.decisions, labels):
                pairs.append((decision.observations[0], label[0]))

    def clone(self, log: Callable[[str], None]) -> dict:
        """Steps 1 and 2: behaviour cloning on the teacher's episodes, then DAgger."""
        cfg = self.cfg
        pairs: list = []
        self._teach(cfg.clone_episodes, None, pairs)
        result = behaviour_clone(self.policy, [p[0] for p in pairs], [p[1] for p in pairs], cfg.imitation)
        log(f"clone: {len(pairs)} teacher decisions, agreement {result.agreement:.3f} after {result.epochs} epochs")
        for round_ in range(cfg.dagger_rounds):
            before = len(pairs)
            self._teach(cfg.dagger_episodes, sample_with(self.policy, deterministic=True), pairs)
            visited = pairs[before:]
            on_policy = agreement(self.policy, [p[0] for p in visited], [p[1] for p in visited])
            result = behaviour_clone(self.policy, [p[0] for p in pairs], [p[1] for p in pairs], cfg.imitation)
            log(
                f"dagger {round_ + 1}: agreement {on_policy:.3f} on the {len(visited)} states the clone visited; "
                f"refitted on {len(pairs)}: {result.agreement:.3f}"
            )
        return {"pairs": len(pairs), "agreement": result.agreement, "epochs": result.epochs}

    def update(self, index: int, optimizer) -> dict:
        """Step 3, once: play the update's groups, then one PPO update on all of them."""
        cfg = self.cfg
        start = time.perf_counter()
        rollouts, labels, hosts = [], [], []
        self.policy.train()
        for _ in range(cfg.groups):
            host, seed = self._next_pair()
            rollout, group_labels = self._play(host, seed, cfg.group_size, sample_with(self.policy))
            rollouts.append(rollout)
            labels.append(group_labels)
            hosts += [host] * cfg.group_size
        # The groups side by side, as one rollout of all their environments.
        merged = merge_rollouts(rollouts)
        groups = [g for g in range(cfg.groups) for _ in range(cfg.group_size)]
        buffer = RolloutBuffer(cfg.episodes_per_update)
        for t, d in enumerate(merged.decisions):
            teacher = torch.tensor([tuple(a) for group in labels for a in group[t]], dtype=torch.long)
            buffer.add(d.observations, d.choice.sample, d.rewards, d.dones, teacher_actions=teacher, groups=groups)
        buffer.compute_returns(cfg.ppo)
        metrics = ppo_update(self.policy, optimizer, buffer, cfg.ppo, update_index=index)
        summaries = merged.summaries
        returns = [s.episode_return for s in summaries]
        record = {
            "update": index,
            "episodes": (index + 1) * cfg.episodes_per_update,
            "return": mean_or_nan(returns),
            "fossils": mean_or_nan(s.fossilized for s in summaries),
            "return_by_host": {h: mean_or_nan(r for r, x in zip(returns, hosts) if x == h) for h in dict.fromkeys(hosts)},
            "seconds": time.perf_counter() - start,
            **{k: v for k, v in metrics.items() if isinstance(v, (int, float, bool))},
        }
        self.history.append(record)
        return record

    def run(
        self, log: Callable[[str], None] = print, on_update: Callable[[dict], None] | None = None, checkpoint: Path | None = None
    ) -> TamiyoPolicy:
        """Clone, then the PPO updates. With `checkpoint`, the run is saved there after the
        clone and after every update, and a run that finds one goes on from it."""
        optimizer = make_optimizer(self.policy, self.cfg.ppo)
        if checkpoint is not None and checkpoint.exists():
            self.restore(checkpoint, optimizer)
            log(f"resumed from {checkpoint}: the clone and {len(self.history) - 1} updates")
        else:
            self.history.append({"clone": self.clone(log)})
            if checkpoint is not None:
                self.save(checkpoint, optimizer)
        for index in range(len(self.history) - 1, self.cfg.updates):
            record = self.update(index, optimizer)
            log(
                f"update {index + 1}/{self.cfg.updates}: return {record['return']:+.3f} (vs twin), "
                f"fossils {record['fossils']:.2f}, {record['seconds']:.0f}s"
            )
            if checkpoint is not None:
                self.save(checkpoint, optimizer)
            if on_update is not None:
                on_update(record)
        return self.policy.eval()

    def save(self, path: Path, optimizer) -> None:
        """Everything the run needs to go on as if never stopped, RNG states included."""
        state = {
            "format": "esper-pretrain-checkpoint",
            "config": config_io.to_dict(self.cfg),
            "policy": self.policy.state_dict(),
            "optimizer": optimizer.state_dict(),
            "history": self.history,
            "pair": self._pair,
            "twins": self.twins,
            "rng": {"python": random.getstate(), "torch": torch.get_rng_state()},
        }
        save_atomic(state, path)

    def restore(self, path: Path, optimizer) -> None:
        """The run saved at `path`, which must have the same settings but for `updates`."""
        try:
            saved = torch.load(path, map_location="cpu", weights_only=True)
            if not isinstance(saved, dict) or saved.get("format") != "esper-pretrain-checkpoint":
                raise ValueError("no esper-pretrain-checkpoint inside")
        except Exception as e:  # a torn or foreign file fails in many ways; each means the same here
            what = f"{type(e).__name__}: {' '.join(str(e).split())[:200]}"
            raise ValueError(f"cannot resume from {path}: it is truncated or not a pretraining checkpoint ({what})") from None
        changed = [k for k in config_io.diff(saved["config"], self.cfg) if k != "updates"]
        if changed:
            raise ValueError(f"{path} was saved by a run with other settings ({', '.join(changed)}); remove it to start afresh")
        self.policy.load_state_dict(saved["policy"])
        optimizer.load_state_dict(saved["optimizer"])
        self.history, self._pair = saved["history"], saved["pair"]
        for host, twins in saved["twins"].items():
            self.twins[host].update(twins)  # in place: the host's environments share this dict
        random.setstate(saved["rng"]["python"])
        torch.set_rng_state(saved["rng"]["torch"])


def downsampled(splits, size: int):
    """The splits' images average-pooled to size x size: the proxy's cheaper inputs."""
    import torch.nn.functional as F

    def shrink(part):
        return dataclasses.replace(part, x=F.adaptive_avg_pool2d(part.x, size)) if part.x.shape[-1] != size else part

    return dataclasses.replace(splits, train=shrink(splits.train), val=shrink(splits.val), test=shrink(splits.test))
