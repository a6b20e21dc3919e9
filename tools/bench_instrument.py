"""Instrumentation cost: time to instrument each host, and the training-step time of the
dormant instrumented model divided by the plain host's (same run, interleaved).

    .venv/bin/python tools/bench_instrument.py            # all hosts, CPU
    .venv/bin/python tools/bench_instrument.py --models resnet18 --steps 30 --device cuda

Steps alternate host, model, host, model... so drift in machine speed hits both alike;
the ratio is the median of per-pair ratios. Target: <= 1.01.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torchvision

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))
from host_cnn import HostCNN  # noqa: E402
from tiny_gpt import TinyGPT  # noqa: E402

import esper  # noqa: E402


def _bert():
    from transformers import BertConfig, BertModel

    cfg = BertConfig(hidden_size=128, num_hidden_layers=4, num_attention_heads=4, intermediate_size=512, vocab_size=1000)
    return BertModel(cfg), torch.randint(0, 1000, (8, 64))


HOSTS = {
    "host_cnn": lambda: (HostCNN(), torch.randn(32, 3, 32, 32)),
    "tiny_gpt": lambda: (TinyGPT(), torch.randint(0, 256, (16, 64))),
    "resnet18": lambda: (torchvision.models.resnet18(weights=None), torch.randn(8, 3, 64, 64)),
    "mobilenet_v2": lambda: (torchvision.models.mobilenet_v2(weights=None), torch.randn(8, 3, 64, 64)),
    "vit_b_16": lambda: (torchvision.models.vit_b_16(weights=None), torch.randn(2, 3, 224, 224)),
    "bert_small": _bert,
}


def _loss(out):
    if hasattr(out, "last_hidden_state"):
        out = out.last_hidden_state
    return out.float().square().mean()


def _step(model, opt, x, device):
    opt.zero_grad(set_to_none=True)
    _loss(model(x)).backward()
    opt.step()
    if device.type == "cuda":
        torch.cuda.synchronize()


def bench(name: str, steps: int, device: torch.device) -> dict:
    torch.manual_seed(0)
    host, x = HOSTS[name]()
    t0 = time.perf_counter()
    mm = esper.instrument(host, (x,))
    t_instrument = time.perf_counter() - t0
    host.to(device).train()
    mm.to(device).train()
    x = x.to(device)
    opt_h = torch.optim.SGD(host.parameters(), lr=1e-4)
    opt_m = torch.optim.SGD(mm.parameters(), lr=1e-4)
    for _ in range(3):
        _step(host, opt_h, x, device)
        _step(mm, opt_m, x, device)
    ratios, th, tm = [], [], []
    for i in range(steps):
        pair = [(host, opt_h, th), (mm, opt_m, tm)]
        for model, opt, sink in pair if i % 2 == 0 else pair[::-1]:
            t = time.perf_counter()
            _step(model, opt, x, device)
            sink.append(time.perf_counter() - t)
        ratios.append(tm[-1] / th[-1])
    return {
        "model": name,
        "trace": mm.kind,
        "slots": len(mm.plane.slots),
        "instrument_s": t_instrument,
        "host_step_ms": 1e3 * statistics.median(th),
        "model_step_ms": 1e3 * statistics.median(tm),
        "ratio": statistics.median(ratios),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="*", default=list(HOSTS), choices=list(HOSTS))
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    print(f"torch {torch.__version__}, device {device}, {torch.get_num_threads()} threads, {args.steps} interleaved steps each")
    print("| model | trace | slots | instrument (s) | host step (ms) | instrumented step (ms) | ratio |")
    print("|---|---|---|---|---|---|---|")
    for name in args.models:
        r = bench(name, args.steps, device)
        print(
            f"| {r['model']} | {r['trace']} | {r['slots']} | {r['instrument_s']:.2f} | {r['host_step_ms']:.1f} "
            f"| {r['model_step_ms']:.1f} | {r['ratio']:.3f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
