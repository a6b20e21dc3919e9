"""Throughput of K growth environments: one by one against one vmapped model, side by side.

    python tools/bench_envs.py                                  # CUDA: K = 1, 4, 8, 16, fp32
    python tools/bench_envs.py --device cpu --ks 1 4 --images 1024 --width 16

Every configuration grows HostCNN in K environments on the same in-memory data (random
images: the content does not change the arithmetic) for `--steps` decisions after one
untimed warm-up decision. Every environment grows the same seed (`--blueprint` in
block2, into TRAINING and then BLENDING), so each does the same work whatever K is; the
batched runner still runs each environment's seed on its own slice, as in training.
Printed per configuration:

    train img/s   training images of all K environments / seconds spent in training chunks
    step img/s    the same images / seconds of whole VectorEnv steps (edits, training,
                  evaluation, ablation probe, rewards, observations)
    vs 1 env      train img/s divided by that of one environment (K = 1 runs
                  sequentially: one host has nothing to batch with)

The first row, `bare host`, trains HostCNN alone (not instrumented, no growth
environment) on the same batches with the same optimizer and precision: the speed one
environment's train img/s is held against.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))

from host_cnn import HostCNN  # noqa: E402

from esper.data.splits import DataSplits, TensorData  # noqa: E402
from esper.kasmina.hosts import reinitialized_copies  # noqa: E402
from esper.leyline import Edit, Op  # noqa: E402
from esper.simic.env import EnvConfig, GrowthEnv  # noqa: E402
from esper.simic.host_training import make_optimizer  # noqa: E402
from esper.simic.vectorized import VectorEnv  # noqa: E402


def random_data(n: int, device: torch.device, classes: int = 10, size: int = 32) -> DataSplits:
    g = torch.Generator().manual_seed(0)

    def part(m):
        return TensorData(torch.randn(m, 3, size, size, generator=g).to(device), torch.randint(0, classes, (m,), generator=g).to(device))

    val = max(256, n // 8)
    return DataSplits(part(n), part(val), part(val), classes, [str(i) for i in range(classes)], "random")


def plan(step: int, blueprint: str) -> Edit:
    """Germinate at the warm-up step, then TRAINING and BLENDING in the timed ones."""
    if step == 0:
        return Edit(Op.GERMINATE, "block2", blueprint, "linear", 2)
    return Edit(Op.ADVANCE, "block2") if step in (1, 2) else Edit(Op.WAIT)


def measure(k: int, runner: str, args, data: DataSplits, device: torch.device) -> dict:
    cfg = EnvConfig(
        epochs=args.steps + 1,
        batch_size=args.batch_size,
        eval_batch_size=1000,
        precision=args.precision,
        channels_last=args.channels_last,
        contribution_samples=256,
    )
    envs = [GrowthEnv(reinitialized_copies(HostCNN(width=args.width)), data, cfg, device=device) for _ in range(k)]
    venv = VectorEnv(envs, runner=runner)
    venv.reset(list(range(k)))
    venv.step([plan(0, args.blueprint)] * k)  # warm-up: first compilations, allocator, autotuning
    images, train_seconds, start = 0, 0.0, time.perf_counter()
    for step in range(1, args.steps + 1):
        results = venv.step([plan(step, args.blueprint)] * k)
        images += sum(r.info.images for r in results)
        train_seconds += sum(r.info.train_seconds for r in results)
    wall = time.perf_counter() - start
    return {
        "k": k,
        "runner": runner,
        "images": images,
        "train_seconds": train_seconds,
        "step_seconds": wall,
        "train_ips": images / train_seconds,
        "step_ips": images / wall,
    }


def bare_host(args, data: DataSplits, device: torch.device) -> dict:
    """The host's own training step timed as `measure` times an environment's: one
    untimed warm-up epoch, then `--steps` epochs, the loss read from the device once per
    epoch (as a training chunk reads it)."""
    host = HostCNN(width=args.width).to(device).train()
    if args.channels_last:
        host.to(memory_format=torch.channels_last)
    opt = make_optimizer(host.parameters(), EnvConfig())  # the environments' optimizer: `measure` keeps its defaults
    bf16 = args.precision == "bf16" and device.type == "cuda"  # the CPU ignores bf16, as HostTrainer does
    order = torch.Generator(device=data.train.x.device).manual_seed(0)

    def epoch() -> int:
        total, images = torch.zeros((), device=device), 0
        for x, y in data.train.batches(args.batch_size, shuffle=True, generator=order):
            x = x.contiguous(memory_format=torch.channels_last) if args.channels_last else x
            opt.zero_grad(set_to_none=True)
            with torch.autocast("cuda", dtype=torch.bfloat16) if bf16 else nullcontext():
                loss = F.cross_entropy(host(x), y)
            loss.backward()
            opt.step()
            total += loss.detach()
            images += len(y)
        total.item()
        return images

    epoch()
    start = time.perf_counter()
    images = sum(epoch() for _ in range(args.steps))
    seconds = time.perf_counter() - start
    ips = images / seconds
    return {
        "k": 1,
        "runner": "bare host",
        "images": images,
        "train_seconds": seconds,
        "step_seconds": seconds,
        "train_ips": ips,
        "step_ips": ips,
        "vs_one": None,
    }


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    add("--ks", type=int, nargs="+", default=[1, 4, 8, 16], help="environment counts K")
    add("--runners", nargs="+", choices=["sequential", "batched"], default=["sequential", "batched"])
    add("--images", type=int, default=8192, help="training images per environment and epoch (one epoch per step)")
    add("--batch-size", type=int, default=256, help="per environment")
    add("--width", type=int, default=32, help="HostCNN's first-block channels")
    add("--steps", type=int, default=3, help="timed decisions after the warm-up one")
    add(
        "--precision",
        choices=["fp32", "bf16"],
        default="fp32",
        help="bf16 autocasts on CUDA; HostCNN's BatchNorm then runs sequentially only (see esper/simic/batched.py)",
    )
    add("--channels-last", action="store_true")
    add("--blueprint", default="conv_enhance", help="the seed every environment grows in block2")
    add("--json", help="also write the rows to this file")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    data = random_data(args.images, device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(
        f"device: {name}  torch {torch.__version__}  HostCNN width {args.width}, batch {args.batch_size} per env, "
        f"{args.precision}{', channels_last' if args.channels_last else ''}"
    )
    header = f"{'K':>3}  {'runner':<11}{'train img/s':>13}{'step img/s':>12}{'vs 1 env':>10}"
    print(header)
    print("-" * len(header))
    host = bare_host(args, data, device)
    print(f"{1:>3}  {'bare host':<11}{host['train_ips']:>13,.0f}{host['step_ips']:>12,.0f}", flush=True)
    rows, one = [host], None
    for k in args.ks:
        for runner in args.runners if k > 1 else ["sequential"]:
            row = measure(k, runner, args, data, device)
            one = row["train_ips"] if k == 1 else one
            row["vs_one"] = row["train_ips"] / one if one else None
            rows.append(row)
            ratio = f"{row['vs_one']:.2f}x" if row["vs_one"] else ""
            print(f"{k:>3}  {runner:<11}{row['train_ips']:>13,.0f}{row['step_ips']:>12,.0f}{ratio:>10}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"device": name, "precision": args.precision, "rows": rows}, indent=2))
    return rows


if __name__ == "__main__":
    main()
    sys.exit(0)
