"""Does growth help? The evidence benchmark: grown hosts against the host alone, paired by seed.

    python tools/evidence.py --scale cpu      # CIFAR-10 on 2 CPU cores, about 90 minutes
    python tools/evidence.py --scale gpu      # more images, epochs and seeds, on CUDA
    python tools/evidence.py --scale smoke    # the synthetic task in under a minute (tested)

The protocol, in order (each run's result is appended to WORK/runs.jsonl as it finishes,
so an interrupted benchmark picks up where it stopped; `--budget-s` stops starting runs
after that many seconds, so a short machine lease finishes whole runs):

  1. headroom   the host alone and static bigger models (seeds fossilized before the
                first step) on seed 0; `static` is the candidate with the best
                validation accuracy; the heuristic prefers the blueprint of the best
                candidate that fits the reward's parameter budget, and may grow a seed
                in every slot (deepest first).
  2. baselines  host, static, random, heuristic, heuristic-budget (the same rule, each
                blueprint the largest that fits the budget left: a candidate teacher),
                the deeper host alone and the heuristic on it, on every evaluation
                seed; then, from each seed's heuristic run:
                static-same (the blueprints it ended with, fossilized before the first
                step: what the same modules give when present from the start),
                host-flops (the host trained for the epochs that spend the grown run's
                training FLOPs) and static-flops (`static` trained for the epochs that
                spend them: fewer).
  3. unseen     on each host of the zoo's UNSEEN_HOSTS (never used to pretrain Tamiyo):
                the host alone (host@NAME), the heuristic (heuristic@NAME) and
                heuristic-budget@NAME.
  4. policies   the Tamiyo that ships with esper (`--policy tamiyo`, pretrained by
                tools/pretrain_tamiyo.py) on the host (tamiyo), the deeper host
                (tamiyo-deep) and every unseen host (tamiyo@NAME); `--tamiyo PATH`
                evaluates another policy file instead.

With `--jobs N` the runs of a phase go to N worker processes; one process writes the log.

Every arm of one seed starts from the same host initialisation and batch order (the
environment seeds both from the episode seed). Selection uses validation accuracy only;
the test split is read once per run, at its end, for the report. Writes OUT/evidence.json
and OUT/evidence.md with its plots (see tools/evidence_doc.py).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import multiprocessing
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from evidence_doc import ARM_ORDER  # noqa: E402
from evidence_regime import BLENDS, BLUEPRINTS, SCALES, STATIC_CANDIDATES, Scale, load_regime_data  # noqa: E402
from host_cnn import HostCNN  # noqa: E402

from esper import instrument  # noqa: E402
from esper.data.splits import TensorData  # noqa: E402
from esper.leyline import SeedStage, Vocabulary  # noqa: E402
from esper.runs.grow_run import write_grow_run  # noqa: E402
from esper.runs.metrics import read_jsonl  # noqa: E402
from esper.simic.env import EnvConfig, GrowthEnv  # noqa: E402
from esper.simic.host_zoo import HOSTS, UNSEEN_HOSTS  # noqa: E402
from esper.simic.policies import PRETRAINED  # noqa: E402
from esper.simic.train_config import TrainConfig  # noqa: E402
from esper.simic.train_files import load_policy  # noqa: E402
from esper.simic.vectorized import decide_with, grow_once  # noqa: E402
from esper.tamiyo import HeuristicConfig, build_policy  # noqa: E402


@dataclass(frozen=True)
class Job:
    """One evaluation run: an arm on a seed, with what it needs to be run in any process.
    policy: ("wait",), ("random",), ("heuristic", HeuristicConfig) or ("tamiyo", path);
    the host is the benchmark's, its deeper one (`deep`) or the zoo's host `zoo`."""

    arm: str
    seed: int
    policy: tuple
    deep: bool = False
    env: EnvConfig | None = None
    zoo: str | None = None


def flops_epochs(epochs: int, target_flops: float, flops: float) -> int:
    """The whole epochs that spend about `target_flops` for a run that spent `flops` in `epochs`."""
    return max(1, round(epochs * target_flops / flops))


class Benchmark:
    def __init__(self, scale: Scale, work: Path, out: Path, data_root: str, jobs: int = 1, threads: int | None = None):
        self.scale, self.work, self.out, self.jobs, self.threads = scale, work, out, jobs, threads
        self.data_root = data_root
        self.work.mkdir(parents=True, exist_ok=True)
        self.data, self.dataset = load_regime_data(scale, data_root)
        self.host = HostCNN(self.data.num_classes, width=scale.width)
        self.deep = HostCNN(self.data.num_classes, width=scale.width, blocks=scale.deep_blocks)
        self.example = self.data.train.x[:2]
        self.log_path = work / "runs.jsonl"
        self.runs = {(r["arm"], r["seed"]): r for r in read_jsonl(self.log_path)} if self.log_path.exists() else {}
        self.phase_seconds: dict[str, float] = {}
        self.eval_seeds = list(range(scale.seeds))
        self.deadline = float("inf")  # time.time() after which no run starts
        self.skip: set[str] = set()  # arms not run this time
        self.tamiyo = PRETRAINED  # the tamiyo arms' policy file
        self._pool: ProcessPoolExecutor | None = None

    # ---- one run ------------------------------------------------------------------------------
    def run(self, arm: str, seed: int, policy, host=None, env_cfg: EnvConfig | None = None) -> dict:
        """One episode of `arm` on `seed` in this process (the log is written by the caller).
        `host` is a template (copied) or a factory's name in the zoo (built under the seed)."""
        if isinstance(host, str):
            factory = partial(HOSTS[host], self.data.num_classes)
        else:
            factory = partial(copy.deepcopy, host if host is not None else self.host)
        vocab = getattr(policy, "vocab", None)  # a trained policy decides in its own vocabulary
        env = GrowthEnv(
            factory,
            self.data,
            env_cfg or self.scale.env,
            self.scale.reward,
            blueprints=list(vocab.blueprints) if vocab else BLUEPRINTS,
            blends=list(vocab.blends) if vocab else BLENDS,
            device=self.scale.device,
            example_input=self.example,
        )
        s = grow_once(env, seed, decide_with(policy), self._on_device(self.data.test))
        write_grow_run(self.work / "runs" / f"{arm.replace(':', '-')}-{seed}", summary=s, edits=env.plane.edits, report=False)
        fossils = {i: sl.blueprint for i, sl in env.plane.slots.items() if sl.stage is SeedStage.FOSSILIZED}
        return {
            "arm": arm,
            "seed": seed,
            "test_acc": s["test_acc"],
            "test_loss": s["test_loss"],
            "val_acc": s["val_acc"],
            "train_acc": s["train_acc"],
            "params": s["params"],
            "host_params": s["host_params"],
            "params_added": s["params"] - s["host_params"],
            "epochs": env.cfg.epochs,
            "train_flops": s["train_flops"],
            "seconds": s["wall_seconds"],
            "fossils": fossils,
            "germinated": s["germinated"],
            "culled": s["culled"],
            "return": s["return"],
            "edits": [e.to_dict() for e in env.plane.edits],
        }

    def policy(self, spec: tuple, seed: int):
        vocab = Vocabulary(BLUEPRINTS, BLENDS, self.scale.env.blend_steps)
        kind = spec[0]
        if kind == "tamiyo":
            return load_policy(spec[1])[0]
        return build_policy(kind, vocab, heuristic=spec[1] if kind == "heuristic" else None, seed=seed)

    def execute(self, job: Job) -> dict | None:
        """`job`'s record, or None when the budget was spent before it could start."""
        if time.time() > self.deadline:
            return None
        host = job.zoo or (self.deep if job.deep else None)
        return self.run(job.arm, job.seed, self.policy(job.policy, job.seed), host, job.env)

    def run_jobs(self, jobs: list[Job]) -> None:
        """Run the jobs the log lacks (in the worker pool, if there is one) and log each as it ends."""
        todo = [j for j in jobs if (j.arm, j.seed) not in self.runs and not self.skipped(j.arm)]
        results = self._pool.map(_execute, todo) if self._pool else map(self.execute, todo)
        for record in results:
            if record is None:
                continue
            self.runs[(record["arm"], record["seed"])] = record
            with open(self.log_path, "a") as f:
                f.write(json.dumps(record) + "\n")
            print(
                f"  {record['arm']:>18} seed {record['seed']}: test {record['test_acc']:.4f} val {record['val_acc']:.4f} "
                f"params +{record['params_added']:,} fossils {record['fossils'] or '-'} ({record['seconds']:.0f}s)",
                flush=True,
            )
        if any((j.arm, j.seed) not in self.runs for j in todo):
            raise BudgetSpent()

    def _on_device(self, split: TensorData) -> TensorData:
        return split.to(self.scale.device) if self.scale.device != "cpu" else split

    def _phase(self, name: str, fn):
        start = time.perf_counter()
        print(f"[{self.scale.name}] {name}", flush=True)
        result = fn()
        self.phase_seconds[name] = self.phase_seconds.get(name, 0.0) + time.perf_counter() - start
        return result

    # ---- the protocol ---------------------------------------------------------------------------
    def static_env(self, candidate: str, epochs: int | None = None) -> EnvConfig:
        blueprint, where = STATIC_CANDIDATES[candidate]
        slots = list(instrument(copy.deepcopy(self.host), (self.example,)).plane.slots)
        chosen = slots[-1:] if where == "deepest" else slots
        return dataclasses.replace(self.scale.env, fossils={s: blueprint for s in chosen}, epochs=epochs or self.scale.env.epochs)

    def headroom(self) -> tuple[str, str]:
        wait = ("wait",)
        self.run_jobs([Job("host", 0, wait)] + [Job(f"static:{n}", 0, wait, env=self.static_env(n)) for n in STATIC_CANDIDATES])
        val = {n: self.runs[(f"static:{n}", 0)]["val_acc"] for n in STATIC_CANDIDATES}
        best = max(val, key=val.get)
        budget = self.scale.reward.param_budget * self.runs[("host", 0)]["params"]
        affordable = [n for n in val if self.runs[(f"static:{n}", 0)]["params_added"] <= budget] or [best]
        preferred = STATIC_CANDIDATES[max(affordable, key=val.get)][0]
        print(
            f"  static = {best} (best validation accuracy); the heuristic prefers {preferred} "
            "(the best candidate within the reward's parameter budget)",
            flush=True,
        )
        return best, preferred

    def heuristic_config(self, preferred: str) -> HeuristicConfig:
        """The heuristic of every heuristic arm and Tamiyo's teacher: the preferred blueprint
        first, a seed in every slot (deepest first), lenient culls (see train_config)."""
        return self.train_config(preferred).heuristic

    def train_config(self, preferred: str) -> TrainConfig:
        """The settings every heuristic arm shares (its `heuristic` field)."""
        heuristic = HeuristicConfig.every_slot(preferred)
        return TrainConfig(blueprints=BLUEPRINTS, blends=BLENDS, env=self.scale.env, reward=self.scale.reward, heuristic=heuristic)

    def matched_jobs(self, best: str, seed: int) -> list[Job]:
        """The arms made from seed `seed`'s heuristic run: its fossils from the first step, and
        the host and `static` for the epochs that spend its training FLOPs."""
        grown, epochs = self.runs[("heuristic", seed)], self.scale.env.epochs
        jobs = [Job("static-same", seed, ("wait",), env=dataclasses.replace(self.scale.env, fossils=grown["fossils"]))]
        if grown["train_flops"]:
            host_epochs = flops_epochs(epochs, grown["train_flops"], self.runs[("host", seed)]["train_flops"])
            static_epochs = flops_epochs(epochs, grown["train_flops"], self.runs[("static", seed)]["train_flops"])
            jobs += [
                Job("host-flops", seed, ("wait",), env=dataclasses.replace(self.scale.env, epochs=host_epochs)),
                Job("static-flops", seed, ("wait",), env=self.static_env(best, static_epochs)),
            ]
        return jobs

    def protocol(self) -> dict:
        start = time.perf_counter()
        best, preferred = self._phase("headroom", self.headroom)
        heuristic = ("heuristic", self.heuristic_config(preferred))
        budget = ("heuristic", dataclasses.replace(heuristic[1], blueprint_by="budget"))
        wait = ("wait",)

        def baselines():
            self.run_jobs(
                [
                    job
                    for seed in self.eval_seeds
                    for job in (
                        Job("host", seed, wait),
                        Job("static", seed, wait, env=self.static_env(best)),
                        Job("random", seed, ("random",)),
                        Job("heuristic", seed, heuristic),
                        Job("heuristic-budget", seed, budget),
                        Job("host-deep", seed, wait, deep=True),
                        Job("heuristic-deep", seed, heuristic, deep=True),
                    )
                ]
            )
            self.run_jobs([job for seed in self.eval_seeds for job in self.matched_jobs(best, seed)])

        def unseen():
            self.run_jobs(
                [
                    Job(f"{arm}@{name}", seed, policy, zoo=name)
                    for name in UNSEEN_HOSTS
                    for seed in self.eval_seeds
                    for arm, policy in (("host", wait), ("heuristic", heuristic), ("heuristic-budget", budget))
                ]
            )

        def policies():
            tamiyo = ("tamiyo", str(self.tamiyo))
            self.run_jobs(
                [Job("tamiyo", seed, tamiyo) for seed in self.eval_seeds]
                + [Job("tamiyo-deep", seed, tamiyo, deep=True) for seed in self.eval_seeds]
                + [Job(f"tamiyo@{name}", seed, tamiyo, zoo=name) for name in UNSEEN_HOSTS for seed in self.eval_seeds]
            )

        self._phase("baselines", baselines)
        self._phase("unseen", unseen)
        self._phase("policies", policies)
        return {
            "static": best,
            "preferred": preferred,
            "tamiyo": str(self.tamiyo),
            "seconds": time.perf_counter() - start,
            "phases": dict(self.phase_seconds),
        }

    def skipped(self, arm: str) -> bool:
        """`--skip` names arms (tamiyo) or, for the unseen hosts, their kind (tamiyo@)."""
        return arm in self.skip or ("@" in arm and arm.split("@")[0] + "@" in self.skip)

    def open_pool(self) -> None:
        """Worker processes for `jobs` > 1: each builds its own Benchmark (data, hosts) once."""
        if self.jobs > 1:
            args = (self.scale, self.work, self.out, self.data_root, 1, self.threads, self.deadline)
            self._pool = ProcessPoolExecutor(self.jobs, multiprocessing.get_context("spawn"), _init_worker, args)

    def close_pool(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)


class BudgetSpent(Exception):
    """The --budget-s time ran out before every run of a phase could start."""


_WORKER: Benchmark | None = None


def _init_worker(scale, work, out, data_root, jobs, threads, deadline) -> None:
    global _WORKER
    if threads:
        torch.set_num_threads(threads)
    _WORKER = Benchmark(scale, work, out, data_root, jobs, threads)
    _WORKER.deadline = deadline


def _execute(job: Job) -> dict | None:
    return _WORKER.execute(job)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scale", choices=sorted(SCALES), default="cpu")
    p.add_argument("--out", default=str(ROOT / "docs"), help="where evidence.md, evidence.json and plots go")
    p.add_argument("--work", help="run directory for logs and trained policies (default runs/evidence-SCALE)")
    p.add_argument("--data", help="dataset spec overriding the scale's (an ImageFolder archive or directory)")
    p.add_argument("--data-root", default="~/.cache/esper", help="decoded dataset cache")
    p.add_argument("--device", help="override the scale's device")
    p.add_argument("--threads", type=int, help="torch CPU threads (per process)")
    p.add_argument("--jobs", type=int, default=1, help="worker processes for the runs")
    p.add_argument("--budget-s", type=float, help="start no run after this many seconds; rerun to continue from the log")
    p.add_argument(
        "--skip",
        nargs="+",
        default=[],
        metavar="ARM",
        help="arms not to run this time (the report shows those in the log); KIND@ skips KIND on every unseen host",
    )
    p.add_argument("--tamiyo", default=str(PRETRAINED), help="the policy file of the tamiyo arms (default: the one esper ships)")
    args = p.parse_args(argv)
    scale = SCALES[args.scale]
    scale = dataclasses.replace(scale, data=args.data or scale.data, device=args.device or scale.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    if scale.data != "synthetic" and not Path(scale.data).expanduser().exists():
        print(f"evidence: no dataset at {scale.data}; pass --data PATH to the CIFAR-10 ImageFolder archive", file=sys.stderr)
        return 2
    work = Path(args.work or ROOT / "runs" / f"evidence-{scale.name}")
    bench = Benchmark(scale, work, Path(args.out), args.data_root, args.jobs, args.threads)
    unknown = set(args.skip) - set(ARM_ORDER) - {"host@", "heuristic@", "heuristic-budget@", "tamiyo@"}
    if unknown:
        print(f"evidence: unknown arm(s) {', '.join(sorted(unknown))}; arms: {', '.join(ARM_ORDER)}", file=sys.stderr)
        return 2
    bench.skip = set(args.skip)
    bench.tamiyo = Path(args.tamiyo)
    if args.budget_s is not None:
        bench.deadline = time.time() + args.budget_s
    bench.open_pool()
    try:
        outcome = bench.protocol()
    except BudgetSpent:
        print(f"evidence: the budget ran out with {len(bench.runs)} runs in {bench.log_path}; run the same command again to go on")
        return 3
    finally:
        bench.close_pool()

    from evidence_doc import write_evidence

    json_path, md_path = write_evidence(bench, outcome)
    print(f"evidence: wrote {md_path} and {json_path} ({outcome['seconds'] / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
