"""The PPO loop that trains Tamiyo on K environments, with checkpoints, resume and metrics.

    trainer = Trainer(cfg, "runs/NAME", host_template, data)
    trainer.run()

Per round: K episodes in lockstep (one batched policy call per decision), one PPO
update on their K x T transitions, one JSONL record per episode and per update, and a
checkpoint (atomic: written to a temporary file, then renamed) every
`checkpoint_every` episodes. A round's episodes count only once its checkpoint is
written; `resume` continues from the last checkpoint and first drops the log records
of anything after it, so each episode appears in the log exactly once.

With `ranks` from a torchrun job (esper.simic.distributed) a round is K x N episodes:
each rank plays its K, the rollouts are gathered to rank 0, which updates the policy,
writes the records and checkpoints, and broadcasts the new weights.

Against the reference implementation's failures (collapse onto WAIT, a critic that
explains nothing, no seed ever fossilized) the loop can warm-start from the heuristic
by behaviour cloning, PPOConfig carries per-head entropy floors, and every update logs
the per-head entropies, explained variance, action histogram and fossils per episode,
and prints `health_warnings` when they fire.
"""

from __future__ import annotations

import dataclasses
import random
import time
from pathlib import Path
from typing import Callable

import torch

from esper.kasmina.hosts import reinitialized_copies
from esper.runs import config as config_io
from esper.runs.files import CHECKPOINT, CONFIG, POLICY, check_fresh_run
from esper.runs.metrics import MetricsWriter
from esper.simic.distributed import Ranks, broadcast, gather
from esper.simic.env import GrowthEnv
from esper.simic.train_config import TrainConfig, episode_seed, load_config
from esper.simic.train_files import (
    TrainState,
    drop_records_after,
    load_checkpoint,
    load_policy,
    save_checkpoint,
    save_policy,
    update_record,
)
from esper.simic.vectorized import Rollout, VectorEnv, choose_with_actions, merge_rollouts, run_episodes, sample_with
from esper.simic.warm_start import discounted_returns
from esper.tamiyo import (
    RolloutBuffer,
    TamiyoPolicy,
    agreement,
    behaviour_clone,
    build_policy,
    fit_value,
    health_warnings,
    make_optimizer,
    mean_or_nan,
    ppo_update,
)

__all__ = ["TrainConfig", "Trainer", "load_config", "load_policy", "save_policy"]


# ---- the loop ------------------------------------------------------------------------------------------
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
        ranks: Ranks = Ranks(),
    ):
        self.cfg = dataclasses.replace(cfg.resolved(), world_size=ranks.world_size)
        self.out = Path(out_dir)
        self.ranks = ranks
        if ranks.main:
            check_fresh_run(self.out, resume)
            self.out.mkdir(parents=True, exist_ok=True)
        self.data = data
        self.progress = progress and ranks.main
        self.log = log if ranks.main else (lambda text: None)
        self.device = torch.device(self.cfg.device)
        factory = reinitialized_copies(host_template)
        self.envs = [
            GrowthEnv(
                factory,
                data,
                self.cfg.env,
                self.cfg.reward,
                blueprints=self.cfg.blueprints,
                blends=self.cfg.blends,
                device=self.device,
                example_input=example_input,
            )
            for _ in range(self.cfg.envs)
        ]
        torch.manual_seed(self.cfg.seed)
        random.seed(self.cfg.seed)
        self.policy = TamiyoPolicy(self.cfg.vocabulary, hidden=self.cfg.hidden)
        self.optimizer = make_optimizer(self.policy, self.cfg.ppo)
        self.state = TrainState(warm_finished=self.cfg.warm_start == 0)
        self._shown: set[str] = set()
        self.metrics = None
        if ranks.main:
            if resume and (self.out / CHECKPOINT).exists():
                self.state = load_checkpoint(self.out / CHECKPOINT, self.cfg, self.policy, self.optimizer)
                dropped = drop_records_after(self.out, self.state)
                self.log(
                    f"resuming {self.out} after {self.state.episodes_done} episodes and {self.state.updates_done} updates"
                    + (f" (dropped {dropped} log records written after the checkpoint)" if dropped else "")
                )
            config_io.save_yaml(self.cfg, self.out / CONFIG)
            self.metrics = MetricsWriter(self.out, purge_step=self.state.global_step)
        self.state = broadcast(self.state, ranks, "sharing the run's progress")
        self._share_policy()

    def _share_policy(self) -> None:
        """Rank 0's policy weights on every rank (only rank 0 learns)."""
        weights = broadcast(self.policy.state_dict() if self.ranks.main else None, self.ranks, "sharing the policy weights")
        if not self.ranks.main:
            self.policy.load_state_dict(weights)

    def _write(self, kind: str, record: dict, step: int | None = None) -> None:
        if self.metrics is not None:
            self.metrics.write(kind, record, step=step)

    def checkpoint(self) -> None:
        if self.ranks.main:
            save_checkpoint(self.out / CHECKPOINT, self.cfg, self.policy, self.optimizer, self.state)

    # ---- running ------------------------------------------------------------------------------------
    def run(self) -> dict:
        cfg = self.cfg
        self._write(
            "run",
            {
                "episodes_done": self.state.episodes_done,
                "updates_done": self.state.updates_done,
                "target_episodes": cfg.episodes,
                "warm_start": cfg.warm_start,
            },
        )
        bar = None
        if self.progress:
            from esper.runs.metrics import progress_bar

            bar = progress_bar(
                total=cfg.warm_start + cfg.episodes,
                initial=min(self.state.global_step, cfg.warm_start + cfg.episodes),
                unit="ep",
                desc="esper train",
            )
        self._bar = bar
        try:
            if not self.state.warm_finished:
                self._warm_start()
            since = 0
            while self.state.episodes_done < cfg.episodes:
                k = min(cfg.envs * self.ranks.world_size, cfg.episodes - self.state.episodes_done)
                n = self._ppo_round(k)
                since += n
                if since >= cfg.checkpoint_every or self.state.episodes_done >= cfg.episodes:
                    self.checkpoint()
                    since = 0
            self.checkpoint()
            if self.ranks.main:
                save_policy(self.policy, self.out / POLICY, cfg, self.state.episodes_done)
        finally:
            if bar is not None:
                bar.close()
            if self.metrics is not None:
                self.metrics.close()
        return {"episodes": self.state.episodes_done, "updates": self.state.updates_done, "history": self.state.history}

    def _say(self, text: str) -> None:
        if self._bar is not None:
            self._bar.write(text)
        else:
            self.log(text)

    def _seeds(self, phase: str, start: int, k: int) -> list[int]:
        return [episode_seed(self.cfg.seed, phase, start + i) for i in range(k)]

    def _log_episodes(self, rollout: Rollout, phase: str, start: int, seeds: list[int]) -> None:
        for i, summary in enumerate(rollout.summaries):
            record = {
                "phase": phase,
                "episode": start + i,
                "env": i,
                "seed": seeds[i],
                "update": self.state.updates_done,
                **summary.to_dict(),
                "throughput": rollout.throughput,
            }
            self._write("episode", record, step=self.state.global_step + i)
        if self._bar is not None:
            s = rollout.summaries
            self._bar.update(len(s))
            self._bar.set_postfix(
                R=f"{mean_or_nan(x.episode_return for x in s):.2f}",
                acc=f"{mean_or_nan(x.val_acc for x in s):.3f}",
                foss=f"{mean_or_nan(x.fossilized for x in s):.2f}",
                img_s=f"{rollout.throughput['images_per_second']:.0f}",
            )

    def _rollout(self, phase: str, start: int, k: int, choose) -> tuple[Rollout | None, list[int]]:
        """Episodes start .. start+k-1, this rank's share of them (K environments each),
        gathered to rank 0: there the whole rollout and its seeds, None elsewhere."""
        ranks, envs = self.ranks, self.cfg.envs
        mine = range(start + ranks.rank * envs, start + min(k, (ranks.rank + 1) * envs))
        if not ranks.main:  # rank 0's RNG is the checkpointed one; the others' follow from the run's progress
            torch.manual_seed(episode_seed(self.cfg.seed, f"rank{ranks.rank}", start))
        seeds = self._seeds(phase, mine.start, len(mine))
        rollout = run_episodes(VectorEnv(self.envs[: len(mine)], self.cfg.runner), seeds, choose) if len(mine) else None
        parts = gather(rollout, ranks, "gathering the rollouts to rank 0")
        if not ranks.main:
            return None, []
        return merge_rollouts([p for p in parts if p is not None]), self._seeds(phase, start, k)

    def _warm_start(self) -> None:
        cfg = self.cfg
        observations, actions, returns = [], [], []
        start = time.perf_counter()
        while self.state.warm_done < cfg.warm_start:
            k = min(cfg.envs * self.ranks.world_size, cfg.warm_start - self.state.warm_done)
            teacher = build_policy("heuristic", cfg.vocabulary, heuristic=cfg.heuristic)
            rollout, seeds = self._rollout("warm", self.state.warm_done, k, choose_with_actions(teacher))
            if rollout is not None:
                for decision in rollout.decisions:
                    observations += decision.observations
                    actions += decision.choice.actions
                returns += discounted_returns(rollout, cfg.ppo.gamma)
                self._log_episodes(rollout, "warm_start", self.state.warm_done, seeds)
            self.state.warm_done += k
        self.state.warm_finished = True
        if not self.ranks.main:
            self._share_policy()
            return
        losses = behaviour_clone(self.policy, observations, actions, cfg.imitation).losses
        agree = agreement(self.policy, observations, actions)
        value_losses, ev = fit_value(self.policy, observations, returns, cfg.value_warm_epochs, cfg.imitation)
        self._share_policy()
        self._write(
            "warm_start",
            {
                "episodes": self.state.warm_done,
                "pairs": len(actions),
                "losses": losses,
                "final_loss": losses[-1],
                "agreement": agree,
                "value_loss": value_losses[-1] if value_losses else None,
                "explained_variance": ev,
                "seconds": time.perf_counter() - start,
            },
            step=self.state.global_step - 1,
        )
        self._say(
            f"warm start: cloned the heuristic from {len(actions)} decisions, agreement {agree:.1%}; "
            f"critic fitted to their returns, explained variance {ev:.2f}"
        )
        self.checkpoint()

    def _ppo_round(self, k: int) -> int:
        """k episodes spread over the ranks, one PPO update on rank 0, its weights shared."""
        cfg = self.cfg
        self.policy.train()
        rollout, seeds = self._rollout("ppo", self.state.episodes_done, k, sample_with(self.policy))
        if rollout is None:
            self._share_policy()
            self.state.episodes_done += k
            self.state.updates_done += 1
            return k
        buffer = RolloutBuffer(k)
        for d in rollout.decisions:
            buffer.add(d.observations, d.choice.sample, d.rewards, d.dones)
        buffer.compute_returns(cfg.ppo)
        metrics = ppo_update(self.policy, self.optimizer, buffer, cfg.ppo, update_index=self.state.updates_done)
        self._share_policy()
        self.state.history.append(metrics)
        warnings = health_warnings(self.state.history, cfg.ppo)
        for text in warnings:
            if text not in self._shown:
                self._say(f"warning: {text}")
        self._shown = set(warnings)

        self._log_episodes(rollout, "ppo", self.state.episodes_done, seeds)
        record = {
            "update": self.state.updates_done,
            "episodes": self.state.episodes_done + k,
            **update_record(metrics, rollout.summaries, cfg, warnings),
            "throughput": rollout.throughput,
        }
        self.state.episodes_done += k
        self.state.updates_done += 1
        # At the round's last episode: a resume purges TensorBoard steps from the next one on.
        self._write("update", record, step=self.state.global_step - 1)
        return k
