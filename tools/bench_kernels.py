"""Bandwidth benchmark: esper's fused blend kernel against PyTorch forms and a plain copy.

On a GPU (H100 targets: forward >= 90% of copy bandwidth, forward+backward >= 85%):

    python tools/bench_kernels.py                      # fp32 + bf16 at 256 and 1024 MB
    python tools/bench_kernels.py --mb 256 4096 --layout feature

Smoke run without a GPU (Triton's interpreter, fp32 only, numbers meaningless):

    TRITON_INTERPRET=1 python tools/bench_kernels.py --cpu --mb 1

The working set is the bytes of h, s and out together. Every variant of one
dtype/size is timed in the same interleaved rounds (CUDA events around 10 back-to-back
calls, median of the rounds), so clock drift hits them alike. GB/s counts 3 element transfers for the
forward (read h, read s, write out) and 6 for forward+backward (adding g, ds, dh)
whatever a variant really moves; "vs copy" divides by ``dst.copy_(src)`` bandwidth.
"""

import argparse
import os
import statistics
import time
from collections.abc import Callable

import torch

import esper.kernels as K

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
B, D = 32, 1024  # h is (B, T, D); T follows from the working set
LAYOUTS = {  # alpha's shape for h of shape (B, T, D)
    "scalar": lambda t: (),
    "sample": lambda t: (B, 1, 1),
    "token": lambda t: (B, t, 1),
    "feature": lambda t: (1, 1, D),
    "sample_feature": lambda t: (B, 1, D),
}
PASSES = {  # name -> (element transfers counted, alpha requires grad)
    "fwd": (3, False),
    "fwd+bwd": (6, False),
    "fwd+bwd+dalpha": (6, True),
}
TARGETS = {"fwd": 0.90, "fwd+bwd": 0.85, "fwd+bwd+dalpha": 0.85}
INNER_CALLS = 10


def eager_blend(h, s, alpha):
    return h + alpha * (s - h.detach())


def lerp_blend(h, s, alpha):
    return torch.lerp(h, s, alpha)


def kernel_blend(h, s, alpha):
    with K.backend("triton"):
        return K.blend(h, s, alpha)


def make_step(fn: Callable, h, s, alpha, g, backward: bool) -> Callable[[], object]:
    if not backward:
        return lambda: fn(h, s, alpha)
    wrt = [t for t in (h, s, alpha) if t.requires_grad]
    # autograd.grad rather than .backward(): leaf .grad accumulation is not the op's cost.
    return lambda: torch.autograd.grad(fn(h, s, alpha), wrt, g)


def time_rounds(steps: dict[str, Callable], reps: int, warmup: int, cuda: bool) -> dict[str, float]:
    """Median milliseconds per call, the steps interleaved round by round."""
    for step in steps.values():
        for _ in range(warmup):
            step()
    # Several calls per timed sample keep the GPU queue fed, so Python launch
    # overhead (custom-op dispatch, autograd) overlaps the kernels, as in training.
    calls = INNER_CALLS if cuda else 1
    samples: dict[str, list] = {name: [] for name in steps}
    for _ in range(reps):
        for name, step in steps.items():
            if cuda:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                for _ in range(calls):
                    step()
                end.record()
                samples[name].append((start, end))
            else:
                t0 = time.perf_counter()
                step()
                samples[name].append((time.perf_counter() - t0) * 1e3)
    if cuda:
        torch.cuda.synchronize()
        samples = {name: [a.elapsed_time(b) for a, b in pairs] for name, pairs in samples.items()}
    return {name: statistics.median(ms) / calls for name, ms in samples.items()}


def bench_config(dtype, mb: float, layout: str, device: str, reps: int, warmup: int) -> list[tuple]:
    elem = torch.empty((), dtype=dtype).element_size()
    t = max(1, int(mb * 2**20 / (3 * elem)) // (B * D))
    shape = (B, t, D)
    n = B * t * D
    cuda = device == "cuda"
    h, s, g = (torch.randn(shape, device=device, dtype=dtype) for _ in range(3))
    # PyTorch's own forms want alpha in h's dtype (lerp insists); the kernel reads any float.
    alpha = torch.rand(LAYOUTS[layout](t), device=device, dtype=dtype)
    src, dst = torch.empty_like(h), torch.empty_like(h)
    # Dynamo caches per code object: without a reset the compiles of earlier
    # configs would run into its recompile limit and silently fall back to eager.
    torch.compiler.reset()
    variants = {
        "kernel": kernel_blend,
        "eager": eager_blend,
        "lerp": lerp_blend,
        "compile": torch.compile(eager_blend, dynamic=False),
    }
    rows = []
    for pass_name, (transfers, alpha_grad) in PASSES.items():
        backward = pass_name != "fwd"
        h.requires_grad_(backward)
        s.requires_grad_(backward)
        alpha.requires_grad_(alpha_grad)
        steps = {name: make_step(fn, h, s, alpha, g, backward) for name, fn in variants.items()}
        steps["copy"] = lambda: dst.copy_(src)
        ms = time_rounds(steps, reps, warmup, cuda)
        copy_gbs = 2 * n * elem / ms["copy"] / 1e6
        for name, t_ms in ms.items():
            gbs = (2 if name == "copy" else transfers) * n * elem / t_ms / 1e6
            rows.append((pass_name, name, t_ms, gbs, gbs / copy_gbs))
    return rows


def main(argv=None) -> list[dict]:
    """Print the table; return its rows (with "target" and "vs_compile" for the kernel's)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--mb", type=float, nargs="+", default=[256, 1024], help="working sets in MB (h + s + out)")
    add("--dtypes", nargs="+", choices=sorted(DTYPES), default=["fp32", "bf16"])
    add("--layout", choices=sorted(LAYOUTS), default="sample", help="alpha's shape over h (B, T, D)")
    add("--reps", type=int, help="timed rounds (default 25 on GPU, 3 on CPU)")
    add("--warmup", type=int, help="untimed calls per variant first (default 5 on GPU, 1 on CPU)")
    add("--cpu", action="store_true", help="smoke run on the CPU through the Triton interpreter")
    args = parser.parse_args(argv)

    if not K.HAS_TRITON:
        parser.error("triton is not importable; the kernel has nothing to run on")
    if args.cpu:
        if os.environ.get("TRITON_INTERPRET") != "1":
            parser.error("--cpu needs TRITON_INTERPRET=1 in the environment (set before triton loads)")
        device, dtypes, reps, warmup = "cpu", ["fp32"], 3, 1  # the interpreter cannot run bf16
        print("CPU smoke run through the Triton interpreter: the numbers below are meaningless.")
    elif torch.cuda.is_available():
        device, dtypes, reps, warmup = "cuda", args.dtypes, 25, 5
        print(f"device: {torch.cuda.get_device_name()}  torch {torch.__version__}")
    else:
        parser.error("no CUDA device; use --cpu with TRITON_INTERPRET=1 for a smoke run")
    reps = args.reps or reps
    warmup = warmup if args.warmup is None else args.warmup

    print(f"alpha layout: {args.layout}; GB/s counts 3 transfers for fwd, 6 for fwd+bwd; copy counts 2")
    print("(for fwd+bwd the kernel really moves 5 with a fixed alpha, dh being g, and 7 with dalpha)")
    header = f"{'dtype':<6}{'MB':>7}  {'pass':<15}{'variant':<9}{'ms':>10}{'GB/s':>10}{'vs copy':>9}"
    print(header)
    print("-" * len(header))
    misses, results = [], []
    for dtype_name in dtypes:
        for mb in args.mb:
            rows = bench_config(DTYPES[dtype_name], mb, args.layout, device, reps, warmup)
            compile_ms = {p: ms for p, name, ms, _, _ in rows if name == "compile"}
            for pass_name, name, ms, gbs, ratio in rows:
                label = f"{dtype_name:<6}{mb:>7g}  {pass_name:<15}{name:<9}"
                print(f"{label}{ms:>10.3f}{gbs:>10.1f}{ratio:>8.0%}")
                results.append(
                    {
                        "dtype": dtype_name,
                        "mb": mb,
                        "pass": pass_name,
                        "variant": name,
                        "ms": ms,
                        "gbs": gbs,
                        "vs_copy": ratio,
                        "vs_compile": compile_ms[pass_name] / ms,
                        "target": TARGETS[pass_name] if name == "kernel" else None,
                    }
                )
                target = TARGETS[pass_name]
                if name == "kernel" and ratio < target:
                    misses.append(f"{dtype_name} {mb:g} MB {pass_name}: {ratio:.0%} < {target:.0%}")
            print()
    if device == "cuda":
        print("kernel targets met" if not misses else "kernel below target:\n  " + "\n  ".join(misses))
    return results


if __name__ == "__main__":
    main()
