"""The PPO loop that trains Tamiyo on K environments, with checkpoints, resume and metrics.

    trainer = Trainer(cfg, "runs/NAME", host_template, data)
    trainer.run()

Per round: K episodes in lockstep (one batched policy call per decision), one PPO
update on their K x T transitions, one JSONL record per episode and per update, and a
checkpoint (atomic: written to a temporary file, then renamed) every
`checkpoint_every` episodes. A round's episodes count only once its checkpoint is
written; `resume` continues from the last checkpoint and first drops the log records
of anything after it, so each episode appears in the log exactly once.

Against the reference implementation's failures (collapse onto WAIT, a critic that
explains nothing, no seed ever fossilized) the loop can warm-start from the heuristic
by behaviour cloning, PPOConfig carries per-head entropy floors, and every update logs
the per-head entropies, explained variance, action histogram and fossils per episode,
and prints `health_warnings` when they fire.
"""

from __future__ import annotations

import dataclasses
import hashlib
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from esper.leyline import MAX_BLENDS, MAX_BLUEPRINTS, CheckpointError, Op, Vocabulary
from esper.runs import config as config_io
from esper.runs.files import CHECKPOINT, CONFIG, POLICY, check_fresh_run, save_atomic
from esper.runs.metrics import JSONL_NAME, MetricsWriter, truncate_jsonl
from esper.simic.env import EnvConfig, GrowthEnv, registered_names, reinitialized_copies
from esper.simic.rewards import RewardConfig
from esper.simic.vectorized import RUNNERS, Rollout, VectorEnv, choose_with_actions, run_episodes, sample_with
from esper.simic.warm_start import discounted_returns
from esper.tamiyo import (
    HeuristicConfig,
    HeuristicPolicy,
    ImitationConfig,
    PPOConfig,
    RolloutBuffer,
    TamiyoPolicy,
    agreement,
    behaviour_clone,
    fit_value,
    health_warnings,
    make_optimizer,
    mean_or_nan,
    ppo_update,
)

@dataclass
class TrainConfig:
    """Every setting of a training run; saved resolved as config.yaml in the run directory."""

    host: str = "examples/host_cnn.py"  # a model file (build_model(), `model`, or one nn.Module class)
    data: str = "synthetic"  # 'synthetic', 'cifar10', an ImageFolder directory / archive, 'text:PATH', 'seq-synthetic'
    data_root: str = "~/.cache/esper"
    download: bool = False
    limit: int | None = None  # training images before the validation share (None: the whole set)
    val_fraction: float = 0.1
    context: int = 64  # tokens per sequence, for sequence data
    episodes: int = 16  # PPO episodes in all, run K at a time
    envs: int = 4  # K environments in lockstep
    runner: str = "auto"  # how VectorEnv trains the K hosts: sequential, batched, or auto (batched on CUDA)
    seed: int = 0
    device: str = "cpu"
    warm_start: int = 0  # heuristic episodes behaviour-cloned before PPO
    value_warm_epochs: int = 100  # then fit the critic to those episodes' returns (value head only)
    checkpoint_every: int = 1  # episodes between checkpoints (at round ends)
    hidden: int = 128  # Tamiyo's width
    blueprints: list[str] = field(default_factory=list)  # head vocabulary; empty: every registered one
    blends: list[str] = field(default_factory=list)
    env: EnvConfig = field(default_factory=EnvConfig)
    # Small rounds (K x T transitions): small minibatches and more epochs, so the critic gets
    # enough gradient steps per update; target_kl still stops the policy from moving far.
    ppo: PPOConfig = field(default_factory=lambda: PPOConfig(minibatch_size=16, update_epochs=8))
    reward: RewardConfig = field(default_factory=RewardConfig)
    imitation: ImitationConfig = field(default_factory=ImitationConfig)
    heuristic: HeuristicConfig = field(default_factory=HeuristicConfig)

    def __post_init__(self):
        if self.episodes < 0 or self.envs < 1 or self.warm_start < 0 or self.checkpoint_every < 1 or self.value_warm_epochs < 0:
            raise ValueError("episodes and warm_start must be >= 0; envs and checkpoint_every >= 1")
        if self.runner not in RUNNERS:
            raise ValueError(f"runner must be one of {', '.join(RUNNERS)}, got {self.runner!r}")

    @property
    def vocabulary(self) -> Vocabulary:
        """What the policy's head indices name (after `resolved`, every registered name if none given)."""
        return Vocabulary(self.blueprints, self.blends, self.env.blend_steps)

    def resolved(self) -> "TrainConfig":
        """Fill the vocabulary in and tie the reward's shaping discount to PPO's gamma."""
        blueprints, blends = registered_names(self.blueprints, self.blends)
        if len(blueprints) > MAX_BLUEPRINTS or len(blends) > MAX_BLENDS:
            raise ValueError(f"at most {MAX_BLUEPRINTS} blueprints and {MAX_BLENDS} blends")
        reward = dataclasses.replace(self.reward, gamma=self.ppo.gamma)
        return dataclasses.replace(self, blueprints=blueprints, blends=blends, reward=reward)


def load_config(path) -> TrainConfig:
    return config_io.load_yaml(TrainConfig, path)


def episode_seed(run_seed: int, phase: str, index: int) -> int:
    """The seed of one episode: a function of the run seed, phase and index only, so a
    resumed run replays exactly the episodes an uninterrupted one would have."""
    digest = hashlib.sha256(f"{run_seed}/{phase}/{index}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


# ---- files ---------------------------------------------------------------------------------------
def save_policy(policy: TamiyoPolicy, path: Path, cfg: TrainConfig, episodes: int) -> None:
    save_atomic(
        {
            "format": "esper-tamiyo",
            "version": 1,
            "policy": policy.state_dict(),
            **policy.vocab.to_dict(),
            "hidden": cfg.hidden,
            "config": config_io.to_dict(cfg),
            "episodes": episodes,
        },
        path,
    )


def load_policy(path) -> tuple[TamiyoPolicy, TrainConfig]:
    """A trained policy from tamiyo.pt (or a training checkpoint.pt) and the config it was trained with."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such policy file: {path}")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"{path} is not a Tamiyo policy file ({type(e).__name__}: {e})") from None
    if not isinstance(blob, dict) or blob.get("format") not in ("esper-tamiyo", "esper-train-checkpoint"):
        raise ValueError(f"{path} is not a Tamiyo policy file: `esper train` writes runs/NAME/tamiyo.pt")
    cfg = config_io.from_dict(TrainConfig, blob["config"])
    policy = TamiyoPolicy(cfg.vocabulary, hidden=cfg.hidden)
    policy.load_state_dict(blob["policy"])
    return policy.eval(), cfg


# ---- the loop ------------------------------------------------------------------------------------------
def _named(counts: list[int], names) -> dict[str, int]:
    return {name: int(counts[i]) for i, name in enumerate(names) if i < len(counts)}


class Trainer:
    def __init__(
        self,
        cfg: TrainConfig,
        out_dir,
        host_template: torch.nn.Module,
        data,
        example_input: torch.Tensor | None = None,
        *,
        resume: bool = False,
        progress: bool = True,
        log: Callable[[str], None] = print,
    ):
        self.cfg = cfg.resolved()
        self.out = Path(out_dir)
        check_fresh_run(self.out, resume)
        self.out.mkdir(parents=True, exist_ok=True)
        self.data = data
        self.progress = progress
        self.log = log
        self.device = torch.device(self.cfg.device)
        factory = reinitialized_copies(host_template)
        self.envs = [
            GrowthEnv(factory, data, self.cfg.env, self.cfg.reward, blueprints=self.cfg.blueprints,
                      blends=self.cfg.blends, device=self.device, example_input=example_input)
            for _ in range(self.cfg.envs)
        ]
        torch.manual_seed(self.cfg.seed)
        random.seed(self.cfg.seed)
        self.policy = TamiyoPolicy(self.cfg.vocabulary, hidden=self.cfg.hidden)
        self.optimizer = make_optimizer(self.policy, self.cfg.ppo)
        self.episodes_done = self.updates_done = self.warm_done = 0
        self.warm_finished = self.cfg.warm_start == 0
        self.history: list[dict] = []
        self._shown: set[str] = set()
        if resume and (self.out / CHECKPOINT).exists():
            self._restore()
        config_io.save_yaml(self.cfg, self.out / CONFIG)
        self.metrics = MetricsWriter(self.out, purge_step=self.global_step)

    @property
    def global_step(self) -> int:
        return self.warm_done + self.episodes_done

    # ---- checkpoints ------------------------------------------------------------------------
    def checkpoint(self) -> None:
        rng = {"python": random.getstate(), "torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        save_atomic(
            {
                "format": "esper-train-checkpoint",
                "version": 1,
                "config": config_io.to_dict(self.cfg),
                "policy": self.policy.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "rng": rng,
                "episodes_done": self.episodes_done,
                "updates_done": self.updates_done,
                "warm_done": self.warm_done,
                "warm_finished": self.warm_finished,
                "history": self.history,
            },
            self.out / CHECKPOINT,
        )

    def _restore(self) -> None:
        path = self.out / CHECKPOINT
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            if not isinstance(state, dict) or state.get("format") != "esper-train-checkpoint":
                raise ValueError("no esper-train-checkpoint inside")
            saved = config_io.from_dict(TrainConfig, state["config"])
        except Exception as e:  # a torn or foreign file fails in many ways; each means the same here
            raise CheckpointError(f"cannot resume from {path}, which is truncated or not a training checkpoint "
                                  f"({type(e).__name__}: {' '.join(str(e).split())[:200]}); nothing was changed") from None
        changed = [k for k in config_io.diff(saved, self.cfg) if k not in ("episodes", "checkpoint_every", "device", "runner")]
        if changed:
            raise ValueError(f"--resume continues the saved run, but these settings differ from it: {', '.join(changed)}")
        self.policy.load_state_dict(state["policy"])
        self.optimizer.load_state_dict(state["optimizer"])
        random.setstate(state["rng"]["python"])
        torch.set_rng_state(state["rng"]["torch"])
        if "cuda" in state["rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])
        for key in ("episodes_done", "updates_done", "warm_done", "warm_finished", "history"):
            setattr(self, key, state[key])
        done, updates = self.episodes_done, self.updates_done

        def keep(r: dict) -> bool:
            kind = r.get("kind")
            if kind == "episode":
                return r["episode"] < (self.warm_done if r["phase"] == "warm_start" else done)
            if kind == "update":
                return r["update"] < updates
            if kind == "warm_start":
                return self.warm_finished
            return True

        dropped = truncate_jsonl(self.out / JSONL_NAME, keep)
        self.log(f"resuming {self.out} after {done} episodes and {updates} updates"
                 + (f" (dropped {dropped} log records written after the checkpoint)" if dropped else ""))

    # ---- running ------------------------------------------------------------------------------------
    def run(self) -> dict:
        cfg = self.cfg
        self.metrics.write("run", {"episodes_done": self.episodes_done, "updates_done": self.updates_done,
                                   "target_episodes": cfg.episodes, "warm_start": cfg.warm_start})
        bar = None
        if self.progress:
            from tqdm import tqdm

            bar = tqdm(total=cfg.warm_start + cfg.episodes, initial=min(self.global_step, cfg.warm_start + cfg.episodes),
                       unit="ep", desc="esper train", dynamic_ncols=True)
        self._bar = bar
        try:
            if not self.warm_finished:
                self._warm_start()
            since = 0
            while self.episodes_done < cfg.episodes:
                k = min(cfg.envs, cfg.episodes - self.episodes_done)
                n = self._ppo_round(k)
                since += n
                if since >= cfg.checkpoint_every or self.episodes_done >= cfg.episodes:
                    self.checkpoint()
                    since = 0
            self.checkpoint()
            save_policy(self.policy, self.out / POLICY, cfg, self.episodes_done)
        finally:
            if bar is not None:
                bar.close()
            self.metrics.close()
        return {"episodes": self.episodes_done, "updates": self.updates_done, "history": self.history}

    def _say(self, text: str) -> None:
        if self._bar is not None:
            self._bar.write(text)
        else:
            self.log(text)

    def _seeds(self, phase: str, start: int, k: int) -> list[int]:
        return [episode_seed(self.cfg.seed, phase, start + i) for i in range(k)]

    def _log_episodes(self, rollout: Rollout, phase: str, start: int, seeds: list[int]) -> None:
        for i, summary in enumerate(rollout.summaries):
            record = {"phase": phase, "episode": start + i, "env": i, "seed": seeds[i], "update": self.updates_done,
                      **summary.to_dict(), "throughput": rollout.throughput}
            self.metrics.write("episode", record, step=self.global_step + i)
        if self._bar is not None:
            s = rollout.summaries
            self._bar.update(len(s))
            self._bar.set_postfix(R=f"{mean_or_nan(x.episode_return for x in s):.2f}", acc=f"{mean_or_nan(x.val_acc for x in s):.3f}",
                                  foss=f"{mean_or_nan(x.fossilized for x in s):.2f}",
                                  img_s=f"{rollout.throughput['images_per_second']:.0f}")

    def _warm_start(self) -> None:
        cfg = self.cfg
        observations, actions, returns = [], [], []
        start = time.perf_counter()
        while self.warm_done < cfg.warm_start:
            k = min(cfg.envs, cfg.warm_start - self.warm_done)
            teacher = HeuristicPolicy(cfg.vocabulary, cfg.heuristic)
            seeds = self._seeds("warm", self.warm_done, k)
            rollout = run_episodes(VectorEnv(self.envs[:k], self.cfg.runner), seeds, choose_with_actions(teacher))
            for decision in rollout.decisions:
                observations += decision.observations
                actions += decision.extra
            returns += discounted_returns(rollout, cfg.ppo.gamma)
            self._log_episodes(rollout, "warm_start", self.warm_done, seeds)
            self.warm_done += k
        losses = behaviour_clone(self.policy, observations, actions, cfg.imitation)
        agree = agreement(self.policy, observations, actions)
        value_losses, ev = fit_value(self.policy, observations, actions, returns, cfg.value_warm_epochs, cfg.imitation)
        self.warm_finished = True
        self.metrics.write("warm_start", {"episodes": self.warm_done, "pairs": len(actions), "losses": losses,
                                          "final_loss": losses[-1], "agreement": agree, "value_loss": value_losses[-1] if value_losses else None,
                                          "explained_variance": ev, "seconds": time.perf_counter() - start}, step=self.global_step - 1)
        self._say(f"warm start: cloned the heuristic from {len(actions)} decisions, agreement {agree:.1%}; "
                  f"critic fitted to their returns, explained variance {ev:.2f}")
        self.checkpoint()

    def _ppo_round(self, k: int) -> int:
        cfg = self.cfg
        seeds = self._seeds("ppo", self.episodes_done, k)
        self.policy.train()
        rollout = run_episodes(VectorEnv(self.envs[:k], self.cfg.runner), seeds, sample_with(self.policy))
        buffer = RolloutBuffer(k)
        for d in rollout.decisions:
            buffer.add(d.observations, d.extra, d.rewards, d.dones)
        buffer.compute_returns(torch.zeros(k), cfg.ppo.gamma, cfg.ppo.gae_lambda)
        metrics = ppo_update(self.policy, self.optimizer, buffer, cfg.ppo)
        self.history.append(metrics)
        warnings = health_warnings(self.history, cfg.ppo)
        for text in warnings:
            if text not in self._shown:
                self._say(f"warning: {text}")
        self._shown = set(warnings)

        self._log_episodes(rollout, "ppo", self.episodes_done, seeds)
        s = rollout.summaries
        ops = metrics["op_counts"]
        record = {
            "update": self.updates_done,
            "episodes": self.episodes_done + k,
            **{key: value for key, value in metrics.items() if not key.endswith("_counts")},
            "actions": _named(ops, [op.name for op in Op]),
            "blueprints": _named(metrics["blueprint_counts"], cfg.blueprints),
            "blends": _named(metrics["blend_counts"], cfg.blends),
            "wait_fraction": ops[Op.WAIT] / max(sum(ops), 1),
            "return_mean": mean_or_nan(x.episode_return for x in s),
            "reward": {c: mean_or_nan(x.reward[c] for x in s) for c in s[0].reward},
            "val_acc_mean": mean_or_nan(x.val_acc for x in s),
            "fossilized_per_episode": mean_or_nan(x.fossilized for x in s),
            "germinated_per_episode": mean_or_nan(x.germinated for x in s),
            "culled_per_episode": mean_or_nan(x.culled for x in s),
            "param_ratio_mean": mean_or_nan(x.param_ratio for x in s),
            "throughput": rollout.throughput,
            "warnings": warnings,
        }
        self.episodes_done += k
        self.updates_done += 1
        # At the round's last episode: a resume purges TensorBoard steps from the next one on.
        self.metrics.write("update", record, step=self.global_step - 1)
        return k

