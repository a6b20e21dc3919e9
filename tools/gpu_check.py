"""Every GPU claim the README makes, measured in one run: one Markdown table and one JSON file.

    python tools/gpu_check.py --data cifar10-jpg.tar.gz --out gpu-check     # a CUDA machine, ~5 min on an H100
    TRITON_INTERPRET=1 python tools/gpu_check.py --cpu --out /tmp/check     # anywhere: tiny sizes, meaningless speeds

Five parts, each timed:

    kernels   tools/bench_kernels.py: the fused blend against eager, torch.lerp,
              torch.compile and a copy; fp32 and bf16; 256 MB and 1 GB working sets
    tests     tests/kernels on this device (compiled by Triton on a GPU, interpreted on
              the CPU), hypothesis-drawn shapes against the PyTorch references
    envs      tools/bench_envs.py: the bare host, then K = 1, 4, 8, 16 environments,
              sequential and batched (HostCNN, batch 256 per environment)
    grow      `esper grow` with the heuristic and the host-alone baseline on --data
    overhead  tools/bench_overhead.py: one training step of the bare host, dormant,
              TRAINING, BLENDING and fossilized seeds; launch-bound and realistic sizes,
              eager and compiled

and the claims, each with its target:

    blend forward                      >= 90% of copy bandwidth
    blend forward+backward             >= 85% of copy bandwidth (six transfers counted)
                                       >= 1.6x torch.compile's speed
    one environment                    >= 0.60x the bare host's train images/s
    16 environments together           >= 3x the images/s of one
    esper grow                         <= 1.2x the host alone's wall time
    dormant seeds                      <= 1.05x the bare host's step launch-bound,
                                       <= 1.02x at the realistic size
    TRAINING and BLENDING seeds        <= 1.15x the step of the same modules fossilized

Needs only what the package needs (torch, triton, pytest, hypothesis): nothing is
installed or downloaded. The repository must be importable (`pip install -e .`).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

import bench_envs  # noqa: E402
import bench_kernels  # noqa: E402
import bench_overhead  # noqa: E402

TARGETS = {"fwd": ("vs_copy", 0.90), "fwd+bwd": ("vs_copy", 0.85)}
COMPILE_TARGET = 1.6  # kernel speed / torch.compile speed, forward+backward
HOST_TARGET = 0.60  # one environment's train images/s / the bare host's
ENVS_TARGET = 3.0  # K = 16 batched images/s / one environment's
GROW_TARGET = 1.2  # esper grow's wall time / the host alone's


def timed(results: dict, name: str, fn):
    start = time.perf_counter()
    print(f"\n== {name} ==", flush=True)
    try:
        results[name] = {"result": fn(), "ok": True}
    except Exception as e:  # one broken part must not hide the others' numbers
        results[name] = {"result": None, "ok": False, "error": f"{type(e).__name__}: {e}"}
        print(f"{name} failed: {results[name]['error']}", flush=True)
    results[name]["seconds"] = time.perf_counter() - start


def kernel_tests(cpu: bool) -> dict:
    env = {**os.environ, "TRITON_INTERPRET": "1" if cpu else "0"}
    r = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/kernels"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    summary = r.stdout.strip().splitlines()[-1] if r.stdout.strip() else r.stderr[-300:]
    print(summary)
    counts = {k: int(v) for v, k in re.findall(r"(\d+) (passed|failed|errors?|skipped)", summary)}
    return {"returncode": r.returncode, "summary": summary, **counts}


def grow(data: str, out: Path, cpu: bool) -> dict:
    device = "cpu" if cpu else "cuda"
    size = ["--limit", "256", "--epochs", "1", "--batch-size", "64"] if cpu else ["--epochs", "8", "--batch-size", "256"]
    fast = [] if cpu else ["--precision", "bf16", "--channels-last"]
    cmd = [
        sys.executable,
        "-m",
        "esper",
        "grow",
        "--host",
        "examples/host_cnn.py",
        "--data",
        data,
        "--policy",
        "heuristic",
        "--baseline",
        "--device",
        device,
        "--out",
        str(out),
        "--no-progress",
        "--data-root",
        str(out.parent / "data"),
        *size,
        *fast,
    ]
    print(" ".join(cmd[2:]), flush=True)
    start = time.perf_counter()
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1800)
    wall = time.perf_counter() - start
    print(r.stdout[-1500:] + r.stderr[-1500:] if r.returncode else r.stdout[-800:])
    if r.returncode:
        raise RuntimeError(f"esper grow exited with {r.returncode}")
    s = json.loads((out / "summary.json").read_text())
    tp = s.get("throughput", {})
    base = s["baseline"]
    return {
        "command": "esper " + " ".join(cmd[3:]),
        "wall_seconds": wall,
        "grown_seconds": s["wall_seconds"],
        "baseline_seconds": base["wall_seconds"],
        "wall_ratio": s["wall_seconds"] / base["wall_seconds"],
        # None when a step's FLOPs were unknown (summary.json's train_flops)
        "flops_ratio": s["train_flops"] / base["train_flops"] if s["train_flops"] and base["train_flops"] else None,
        "test_acc": s["test_acc"],
        "baseline_test_acc": base["test_acc"],
        "params": s["params"],
        "baseline_params": base["params"],
        "images_per_second": tp.get("images_per_second"),
        "fossils": s["fossil_blueprints"],
    }


def overhead(cpu: bool) -> dict:
    """bench_overhead's table, keyed "size mode" (JSON keys are strings)."""
    scale = ["--sizes", "launch", "--modes", "eager", "--rounds", "3", "--warmup", "1"] if cpu else ["--device", "cuda", "--rounds", "100"]
    # bench_overhead sets the thread count: this process keeps its own
    table = bench_overhead.main([*scale, "--threads", str(torch.get_num_threads())])
    return {f"{s} {m}": variants for (s, m), variants in table.items()}


def claims(results: dict) -> list[tuple[str, str, str, str]]:
    """(claim, target, measured, met) rows from the parts' results."""
    rows = []
    kernels = results.get("kernels", {}).get("result") or []
    for r in (r for r in kernels if r["variant"] == "kernel" and r["pass"] in TARGETS):
        key, target = TARGETS[r["pass"]]
        rows.append((f"blend {r['pass']} {r['dtype']} {r['mb']:g} MB vs copy", f">= {target:.0%}", f"{r[key]:.0%}", _met(r[key] >= target)))
        if r["pass"] == "fwd+bwd":
            rows.append(
                (
                    f"blend fwd+bwd {r['dtype']} {r['mb']:g} MB vs torch.compile",
                    f">= {COMPILE_TARGET}x",
                    f"{r['vs_compile']:.2f}x",
                    _met(r["vs_compile"] >= COMPILE_TARGET),
                )
            )
    tests = results.get("tests", {}).get("result")
    if tests:
        rows.append(("kernel tests on this device", "all pass", tests["summary"], _met(tests["returncode"] == 0)))
    envs = results.get("envs", {}).get("result") or []
    host = next((r for r in envs if r["runner"] == "bare host"), None)
    one = next((r for r in envs if r["k"] == 1 and r["runner"] == "sequential"), None)
    if host and one:
        ratio = one["train_ips"] / host["train_ips"]
        rows.append(
            (
                "one env train img/s vs the bare host",
                f">= {HOST_TARGET:.2f}x",
                f"{one['train_ips']:,.0f} vs {host['train_ips']:,.0f} ({ratio:.2f}x)",
                _met(ratio >= HOST_TARGET),
            )
        )
    for r in envs:
        if r["k"] > 1 and r["vs_one"]:
            met = _met(r["vs_one"] >= ENVS_TARGET) if r["k"] == 16 and r["runner"] == "batched" else ""
            rows.append(
                (
                    f"K={r['k']} {r['runner']} train img/s vs one env",
                    f">= {ENVS_TARGET}x" if met else "",
                    f"{r['train_ips']:,.0f} ({r['vs_one']:.2f}x)",
                    met,
                )
            )
    g = results.get("grow", {}).get("result")
    if g:
        rows.append(("esper grow (heuristic) test accuracy, wall", "", f"{g['test_acc']:.3f}, {g['grown_seconds']:.0f} s", ""))
        rows.append(("host alone test accuracy, wall", "", f"{g['baseline_test_acc']:.3f}, {g['baseline_seconds']:.0f} s", ""))
        flops = f" for {g['flops_ratio']:.2f}x its training FLOPs" if g["flops_ratio"] else ""
        rows.append(
            (
                "esper grow wall time vs the host alone's",
                f"<= {GROW_TARGET}x",
                f"{g['wall_ratio']:.2f}x{flops}",
                _met(g["wall_ratio"] <= GROW_TARGET),
            )
        )
    for key, variants in (results.get("overhead", {}).get("result") or {}).items():
        dormant, target = variants["dormant"], bench_overhead.TARGETS[(key.split()[0], "dormant")]
        rows.append(
            (
                f"{key} step, dormant vs bare host",
                f"<= {target}x",
                f"{dormant['vs_host']:.2f}x ({dormant['ms']:.2f} ms)",
                _met(dormant["vs_host"] <= target),
            )
        )
        live = {v: r["vs_fossil"] for v, r in variants.items() if r["vs_fossil"] is not None}
        worst = max(live, key=live.get)  # TRAINING and every blend: the one furthest from its fossil
        rows.append(
            (
                f"{key} step, TRAINING/BLENDING vs fossilized (worst: {worst})",
                f"<= {bench_overhead.LIVE_TARGET}x",
                f"{live[worst]:.2f}x",
                _met(live[worst] <= bench_overhead.LIVE_TARGET),
            )
        )
    for name, part in results.items():
        if isinstance(part, dict) and not part.get("ok", True):
            rows.append((f"{name} part", "runs", part["error"][:120], "no"))
    return rows


def _met(ok: bool) -> str:
    return "yes" if ok else "no"


def markdown(results: dict) -> str:
    lines = [
        f"Device: {results['device']}; torch {results['torch']}, triton {results['triton']}",
        "",
        "| claim | target | measured | met |",
        "|---|---|---|---|",
    ]
    lines += [f"| {' | '.join(row)} |" for row in claims(results)]
    parts = ", ".join(f"{k} {v['seconds']:.0f} s" for k, v in results.items() if isinstance(v, dict) and "seconds" in v)
    return "\n".join(lines + ["", f"Time: {parts}."])


def write(results: dict, out: Path) -> str:
    table = markdown(results)
    (out / "gpu_check.md").write_text(table + "\n")
    (out / "gpu_check.json").write_text(json.dumps(results, indent=2, default=str))
    return table


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpu", action="store_true", help="tiny sizes on the CPU (needs TRITON_INTERPRET=1)")
    parser.add_argument("--data", help="dataset for the grow part (default: CIFAR-10 archive beside the repo, or synthetic with --cpu)")
    parser.add_argument("--out", default="gpu-check", help="directory for gpu_check.json, gpu_check.md and the grow run")
    parser.add_argument("--skip", nargs="*", default=[], choices=["kernels", "tests", "envs", "grow", "overhead"])
    args = parser.parse_args(argv)
    if args.cpu and os.environ.get("TRITON_INTERPRET") != "1":
        parser.error("--cpu needs TRITON_INTERPRET=1 in the environment (set before triton loads)")
    if not args.cpu and not torch.cuda.is_available():
        parser.error("no CUDA device: run with --cpu (and TRITON_INTERPRET=1) for the smoke version")
    data = args.data or ("synthetic" if args.cpu else str(ROOT.parent / "shared" / "data" / "cifar10-jpg.tar.gz"))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    import triton

    results: dict = {
        "device": "cpu" if args.cpu else torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "triton": triton.__version__,
    }
    kernel_args = ["--cpu", "--mb", "0.05", "--reps", "1", "--warmup", "0"] if args.cpu else ["--mb", "256", "1024"]
    env_args = ["--device", "cpu", "--ks", "1", "2", "--images", "128", "--width", "8", "--steps", "1"] if args.cpu else []
    parts = {
        "kernels": lambda: bench_kernels.main(kernel_args),
        "tests": lambda: kernel_tests(args.cpu),
        "envs": lambda: bench_envs.main(env_args + ["--json", str(out / "bench_envs.json")]),
        "grow": lambda: grow(data, Path(tempfile.mkdtemp(dir=out, prefix="grow-")), args.cpu),
        "overhead": lambda: overhead(args.cpu),
    }
    table = write(results, out)
    for name, fn in parts.items():
        if name not in args.skip:
            timed(results, name, fn)
            # written after every part: a run stopped by a time limit keeps what it measured
            table = write(results, out)
    print("\n" + table)
    print(f"\nwrote {out / 'gpu_check.md'} and {out / 'gpu_check.json'}")
    return 0 if all(v.get("ok", True) for v in results.values() if isinstance(v, dict)) else 1


if __name__ == "__main__":
    sys.exit(main())
