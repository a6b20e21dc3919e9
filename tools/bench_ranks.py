"""One process against two: `esper grow` and `esper train` under torchrun, side by side.

    .venv/bin/python tools/bench_ranks.py [--limit 5400] [--epochs 4] [--episodes 4]

Each command runs with --nproc_per_node 1 and then 2, splitting this machine's cores
between the processes (OMP_NUM_THREADS = cores / processes), on the synthetic task with
HostCNN. grow: the same episode, each rank training its shard of every batch. train: the
same number of episodes, K environments on one process or K/2 on each of two. Prints
wall time, images/s and decisions/s of the whole job, and the ratio two/one.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def torchrun(nproc: int, args: list[str], cores: int) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, cores // nproc))}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", "-m", "esper", *args]
    start = time.perf_counter()
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env)
    if result.returncode:
        sys.exit(f"{' '.join(cmd)} failed:\n{result.stderr[-3000:]}")
    return time.perf_counter() - start


def last_record(path: Path, kind: str) -> dict:
    records = [json.loads(line) for line in path.read_text().splitlines()]
    return [r for r in records if r.get("kind") == kind][-1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--limit", type=int, default=5400, help="synthetic training images")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--episodes", type=int, default=4, help="esper train: episodes (one PPO update per round)")
    p.add_argument("--cores", type=int, default=os.cpu_count())
    args = p.parse_args()
    common = [
        "--host",
        "examples/host_cnn.py",
        "--data",
        "synthetic",
        "--limit",
        str(args.limit),
        "--epochs",
        str(args.epochs),
        "--no-progress",
    ]
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for n in (1, 2):
            out = Path(tmp) / f"grow{n}"
            wall = torchrun(n, ["grow", "--policy", "heuristic", "--out", str(out), *common], args.cores)
            s = json.loads((out / "summary.json").read_text())
            rows[("grow", n)] = (
                wall,
                s["throughput"]["images_per_second"],
                s["throughput"]["decisions_per_second"],
                f"test acc {s['test_acc']:.3f}",
            )
        for n in (1, 2):
            out = Path(tmp) / f"train{n}"
            envs = args.episodes // n
            wall = torchrun(n, ["train", "--episodes", str(args.episodes), "--envs", str(envs), "--out", str(out), *common], args.cores)
            tp = last_record(out / "metrics.jsonl", "update")["throughput"]
            rows[("train", n)] = (wall, tp["images_per_second"], tp["decisions_per_second"], f"{envs} env(s) per process")
    print(f"{args.cores} cores; synthetic, {args.limit} images, {args.epochs} epochs; train: {args.episodes} episodes")
    print("| command | processes | wall (s) | images/s | decisions/s | |")
    print("|---|---|---|---|---|---|")
    for (command, n), (wall, ips, dps, note) in rows.items():
        print(f"| {command} | {n} | {wall:.1f} | {ips:,.0f} | {dps:.2f} | {note} |")
    for command in ("grow", "train"):
        one, two = rows[(command, 1)], rows[(command, 2)]
        print(f"{command}: two processes / one: images/s {two[1] / one[1]:.2f}x, wall {two[0] / one[0]:.2f}x")


if __name__ == "__main__":
    main()
