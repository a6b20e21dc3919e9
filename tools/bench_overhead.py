"""Growth overhead: what a live seed costs beyond its module's own compute.

One training step (zero_grad, forward, cross-entropy, backward, `plane.guard()`, AdamW
step) of each model, all timed in the same interleaved rounds:

    host       the bare host (examples/host_cnn.py)
    dormant    instrumented, every slot dormant
    training   a conv_enhance seed in every slot, TRAINING
    blend:B    the same seeds BLENDING with blend B (alpha halfway)
    fossil     the same seeds fossilized (fossil:gated keeps the gated blend's gate)

Every seeded model is grown the same way (germinate, advance, tick) from the same weights
with the optimizer attached, so each has the same parameter groups; only the stage
differs. "vs host" and "vs fossil" are medians of per-round ratios (the fossil a live
seed becomes: fossil:gated for blend:gated, fossil for the rest), so drift in the
machine's speed hits both sides of a ratio alike.

    nice -n 10 .venv/bin/python tools/bench_overhead.py                   # eager and compiled, both sizes
    nice -n 10 .venv/bin/python tools/bench_overhead.py --modes eager --sizes launch
    python tools/bench_overhead.py --device cuda                         # compiled: CUDA graphs

Sizes: `launch` (batch 2, 8x8 images: the step is mostly per-call overhead) and
`realistic` (batch 128, 32x32). Targets (issue: growing costs what the grown modules
cost): dormant <= 1.05x the host launch-bound and <= 1.02x at the realistic size;
TRAINING and BLENDING <= 1.15x the same modules fossilized.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))
from host_cnn import HostCNN  # noqa: E402

import esper  # noqa: E402

SIZES = {"launch": (2, 8), "realistic": (128, 32)}  # batch, image side
ROUNDS = {"launch": 200, "realistic": 12}
BLUEPRINT = "conv_enhance"
BLENDS = ("linear", "sigmoid", "gated")
VARIANTS = ("host", "dormant", "training", *(f"blend:{b}" for b in BLENDS), "fossil", "fossil:gated")
TARGETS = {("launch", "dormant"): 1.05, ("realistic", "dormant"): 1.02}  # vs host; live seeds: 1.15 vs fossil
LIVE_TARGET = 1.15


def fossil_of(variant: str) -> str | None:
    """The variant whose modules a live variant's seeds become (None: not a live seed)."""
    if variant == "training" or variant.startswith("blend:"):
        return "fossil:gated" if variant == "blend:gated" else "fossil"
    return None


def build(variant: str, x: torch.Tensor):
    """(model, optimizer, plane or None) for `variant`, from the same initial weights."""
    torch.manual_seed(0)
    host = HostCNN().to(x.device).train()
    if variant == "host":
        return host, torch.optim.AdamW(host.parameters(), lr=1e-3), None
    mm = esper.instrument(host, (x,)).train()
    opt = torch.optim.AdamW(mm.parameters(), lr=1e-3)
    plane = mm.plane
    plane.attach_optimizer(opt)
    if variant == "dormant":
        return mm, opt, plane
    blend = variant.split(":")[1] if ":" in variant else "linear"
    for slot_id in list(plane.slots):
        plane.germinate(slot_id, BLUEPRINT, blend=blend, steps=4)
        plane.advance(slot_id)  # TRAINING
        if variant != "training":
            plane.advance(slot_id)  # BLENDING
    if variant != "training":
        plane.step(2)  # alpha halfway
    if variant.startswith("fossil"):
        for slot_id, slot in list(plane.slots.items()):
            if slot.stage is esper.SeedStage.BLENDING:
                plane.fossilize(slot_id)
    return mm, opt, plane


def make_step(model, opt, plane, x, y):
    def step():
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        if plane is not None:
            plane.guard()
        opt.step()
        if x.is_cuda:
            torch.cuda.synchronize()

    return step


def measure(size: str, mode: str, rounds: int, warmup: int, device: torch.device) -> dict[str, dict]:
    """Each variant's median step (ms), and its medians of per-round ratios to the host
    and to its fossil."""
    batch, side = SIZES[size]
    torch.manual_seed(1)
    x, y = torch.randn(batch, 3, side, side, device=device), torch.randint(0, 10, (batch,), device=device)
    torch.compiler.reset()
    steps = {}
    for variant in VARIANTS:
        model, opt, plane = build(variant, x)
        if mode == "compiled" and plane is None:
            model = torch.compile(model, dynamic=False)
        elif mode == "compiled":
            model.compile_training()  # as `esper grow --compile` runs it
        steps[variant] = make_step(model, opt, plane, x, y)
    for step in steps.values():
        for _ in range(warmup):  # compiled: the first calls compile
            step()
    times: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for r in range(rounds):
        order = VARIANTS[r % len(VARIANTS) :] + VARIANTS[: r % len(VARIANTS)]  # rotate who goes first
        for variant in order:
            t = time.perf_counter()
            steps[variant]()
            times[variant].append(time.perf_counter() - t)

    def ratio(a: str, b: str) -> float:
        return statistics.median(p / q for p, q in zip(times[a], times[b]))

    return {
        v: {
            "ms": 1e3 * statistics.median(times[v]),
            "vs_host": ratio(v, "host"),
            "vs_fossil": ratio(v, fossil_of(v)) if fossil_of(v) else None,
        }
        for v in VARIANTS
    }


def misses(size: str, results: dict[str, dict]) -> list[str]:
    out = []
    for v, r in results.items():
        target = TARGETS.get((size, v))
        if target is not None and r["vs_host"] > target:
            out.append(f"{size} {v}: {r['vs_host']:.2f}x the host > {target}")
        if r["vs_fossil"] is not None and r["vs_fossil"] > LIVE_TARGET:
            out.append(f"{size} {v}: {r['vs_fossil']:.2f}x its fossil > {LIVE_TARGET}")
    return out


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", choices=list(SIZES), default=list(SIZES))
    parser.add_argument("--modes", nargs="+", choices=["eager", "compiled"], default=["eager", "compiled"])
    parser.add_argument("--rounds", type=int, help="interleaved rounds per size and mode (default: launch 200, realistic 12)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps of each variant first")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"torch {torch.__version__}, {where}, {torch.get_num_threads()} thread(s); {BLUEPRINT} in every slot of HostCNN")
    table = {
        (size, mode): measure(size, mode, args.rounds or ROUNDS[size], args.warmup, device) for size in args.sizes for mode in args.modes
    }
    columns = list(table)
    print("| variant | " + " | ".join(f"{s} {m}: ms, vs host, vs fossil" for s, m in columns) + " |")
    print("|---|" + "---|" * len(columns))
    for v in VARIANTS:
        cells = []
        for key in columns:
            r = table[key][v]
            fossil = f", {r['vs_fossil']:.2f}x" if r["vs_fossil"] is not None else ""
            cells.append(f"{r['ms']:.2f} ms, {r['vs_host']:.2f}x{fossil}")
        print(f"| {v} | " + " | ".join(cells) + " |")
    if device.type == "cpu" and "eager" in args.modes:  # the targets are the CPU's, eager
        missed = [m for (size, mode), results in table.items() for m in misses(size, results) if mode == "eager"]
        print("eager targets met" if not missed else "eager targets missed:\n  " + "\n  ".join(missed))
    return table


if __name__ == "__main__":
    main()
