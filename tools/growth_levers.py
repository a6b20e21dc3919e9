"""What makes growth pay? The heuristic's levers, one at a time, in the evidence regime.

    python tools/growth_levers.py                 # CIFAR-10, the evidence's CPU regime, 5 seeds
    python tools/growth_levers.py --scale smoke   # the synthetic task in about a minute
    python tools/growth_levers.py --deep --arms early+auto+harm auto+strict auto+window
                                                  # chosen arms, on the evidence's deeper host

Every arm runs the heuristic of the evidence benchmark (tools/evidence.py: the blueprint
it prefers, a seed in every slot, deepest first) on the same seeds, host initialisation and
batch order, changing one lever at a time:

    host          the host alone
    before        germination once three decisions of history exist, seeds at the
                  host's rate of the moment, no loss-rise cull (the heuristic as it was)
    early         germination from the first decision
    early+peak    ... and seeds start at the host's peak learning rate ("peak")
    early+peak+harm  early+peak, and a blending seed is culled while the training loss
                  rises (the loss_rise rule)
    early+auto+harm  early, the loss-rise cull, and the plane moves seeds on by itself
                  (training_ticks: 1), so seeds grow side by side (the evidence's heuristic)
    auto+strict   early+auto+harm with the library's default cull rules (tolerance 0.02,
                  decline 0.05) instead of the evidence's lenient 0.1
    auto+window   early+auto+harm germinating only in the first quarter of the run
    static-same   the blueprints the last arm run ends with on that seed, fossilized
                  before the first step: what the same modules give when present from the start

The first four arms leave ADVANCE to the policy (training_ticks: None), as the heuristic
did before.

Each arm's gain is its test accuracy minus the host's on the same seed; the table gives
the mean and a paired 95% t interval. Runs append to WORK/runs.jsonl as they finish, so an
interrupted study picks up where it stopped; the table goes to OUT/growth-levers.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from evidence import SCALES, Benchmark, Job  # noqa: E402
from evidence_doc import paired  # noqa: E402

from esper.tamiyo import HeuristicConfig  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
NO_LOSS_RULE = float("inf")


def arms(bench: Benchmark, preferred: str) -> dict[str, tuple[HeuristicConfig, dict]]:
    """arm -> (heuristic settings, EnvConfig changes)."""
    base = bench.heuristic_config(preferred)
    history = min(3 / bench.scale.env.decisions, base.latest_germination)  # the old rule: three decisions of history

    def h(**kw) -> HeuristicConfig:
        return dataclasses.replace(base, **kw)

    by_policy, by_plane = {"training_ticks": None}, {"training_ticks": 1, "seed_lr_rule": "follow"}
    defaults = HeuristicConfig()
    return {
        "before": (h(earliest_germination=history, loss_rise=NO_LOSS_RULE), {**by_policy, "seed_lr_rule": "follow"}),
        "early": (h(earliest_germination=0.0, loss_rise=NO_LOSS_RULE), {**by_policy, "seed_lr_rule": "follow"}),
        "early+peak": (h(earliest_germination=0.0, loss_rise=NO_LOSS_RULE), {**by_policy, "seed_lr_rule": "peak"}),
        "early+peak+harm": (h(earliest_germination=0.0), {**by_policy, "seed_lr_rule": "peak"}),
        "early+auto+harm": (h(earliest_germination=0.0), by_plane),
        "auto+strict": (h(earliest_germination=0.0, tolerance=defaults.tolerance, decline=defaults.decline), by_plane),
        "auto+window": (h(earliest_germination=0.0, latest_germination=0.25), by_plane),
    }


def study(bench: Benchmark, preferred: str, chosen: list[str] | None = None, deep: bool = False) -> dict[str, dict]:
    levers = arms(bench, preferred)
    levers = {arm: levers[arm] for arm in chosen} if chosen else levers
    for seed in bench.eval_seeds:
        jobs = [Job("host", seed, ("wait",), deep=deep)]
        for arm, (heuristic, changes) in levers.items():
            jobs.append(Job(arm, seed, ("heuristic", heuristic), deep=deep, env=dataclasses.replace(bench.scale.env, **changes)))
        bench.run_jobs(jobs)
        grown = bench.runs[(list(levers)[-1], seed)]["fossils"]
        bench.run_jobs([Job("static-same", seed, ("wait",), deep=deep, env=dataclasses.replace(bench.scale.env, fossils=grown))])
    names = [*levers, "static-same"]
    return {
        arm: paired([bench.runs[(arm, s)]["test_acc"] - bench.runs[("host", s)]["test_acc"] for s in bench.eval_seeds]) for arm in names
    }


def table(bench: Benchmark, results: dict[str, dict], command: str) -> str:
    lines = [
        "# Growth levers",
        "",
        f"Produced by `{command}`: the evidence benchmark's {bench.scale.name} regime, seeds "
        f"{bench.eval_seeds[0]}..{bench.eval_seeds[-1]}, test accuracy gain over the host alone on the same seed.",
        "",
        "| arm | gain over the host (points) | paired 95% interval | parameters added (mean) |",
        "|---|---|---|---|",
    ]
    for arm, r in results.items():
        added = [bench.runs[(arm, s)]["params_added"] for s in bench.eval_seeds]
        lo, hi = r["ci95"]
        lines.append(f"| {arm} | {100 * r['mean_diff']:+.2f} | [{100 * lo:+.2f}, {100 * hi:+.2f}] | {sum(added) / len(added):,.0f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scale", choices=sorted(SCALES), default="cpu")
    p.add_argument("--seeds", type=int, help="evaluation seeds 0..N-1 (default: the scale's)")
    p.add_argument("--out", default=str(ROOT / "docs"))
    p.add_argument("--work", help="run directory (default runs/levers-SCALE)")
    p.add_argument("--data-root", default="~/.cache/esper", help="decoded dataset cache")
    p.add_argument("--preferred", default="depthwise", help="the blueprint the heuristic prefers (the evidence's headroom pick)")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--jobs", type=int, default=1, help="worker processes for the runs")
    p.add_argument("--arms", nargs="+", metavar="ARM", help="the arms to run (default: all; static-same follows the last)")
    p.add_argument("--deep", action="store_true", help="on the evidence's deeper host (default work dir runs/levers-SCALE-deep)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    scale = SCALES[args.scale]
    if args.seeds:
        scale = dataclasses.replace(scale, seeds=args.seeds)
    name = f"levers-{scale.name}" + ("-deep" if args.deep else "")
    work = Path(args.work or ROOT / "runs" / name)
    bench = Benchmark(scale, work, Path(args.out), str(Path(args.data_root).expanduser()), args.jobs, args.threads)
    known = arms(bench, args.preferred)
    unknown = [a for a in args.arms or [] if a not in known]
    if unknown:
        print(f"growth_levers: unknown arm(s) {', '.join(unknown)}; arms: {', '.join(known)}", file=sys.stderr)
        return 2
    bench.open_pool()
    try:
        results = study(bench, args.preferred, args.arms, args.deep)
    finally:
        bench.close_pool()
    command = " ".join(["python tools/growth_levers.py", *(argv if argv is not None else sys.argv[1:])])
    path = Path(args.out) / (name.replace("levers", "growth-levers") + ".md")
    path.write_text(table(bench, results, command))
    print(path.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
