"""Inference time of an exported fossil model divided by a hand-written module with the
same layers (same run, interleaved). Target: 1.00 within noise.

    .venv/bin/python tools/bench_export.py [--batch 64] [--reps 30] [--device cpu]

The grown model is HostCNN with a conv_enhance fossil after block2 and a channel
attention fossil after block3; the hand-written twin calls the very same layers.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))
from host_cnn import HostCNN  # noqa: E402

import esper  # noqa: E402


class HandWritten(nn.Module):
    def __init__(self, host, enhance, attention):
        super().__init__()
        self.host, self.enhance, self.attention = host, enhance, attention

    def forward(self, x):
        h = self.host
        x = h.pool(h.block1(x))
        x = h.pool(self.enhance(h.block2(x)))
        x = h.pool(self.attention(h.block3(x)))
        return h.classifier(torch.flatten(x.mean(dim=(2, 3)), 1))


def grown_model() -> esper.MorphogeneticModel:
    torch.manual_seed(0)
    mm = esper.instrument(HostCNN(), (torch.randn(2, 3, 32, 32),))
    for slot_id, blueprint in (("block2", "conv_enhance"), ("block3", "attention")):
        mm.plane.germinate(slot_id, blueprint, steps=1)
        mm.plane.advance(slot_id), mm.plane.advance(slot_id)
    mm.plane.step()
    for slot_id in ("block2", "block3"):
        mm.plane.fossilize(slot_id)
        for p in mm.plane.slots[slot_id].seed.parameters():
            nn.init.normal_(p, std=0.05)
    return mm.eval()


def timed(fn, x, device) -> float:
    t = time.perf_counter()
    fn(x)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--reps", type=int, default=30)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    mm = grown_model()
    x = torch.randn(args.batch, 3, 32, 32)
    with tempfile.TemporaryDirectory() as d:
        path = esper.export(mm, (x,), Path(d) / "fossil.pt2")
        exported = torch.export.load(str(path)).module().to(device)
    slots = mm.plane.slots
    hand = HandWritten(mm.host, slots["block2"].seed, slots["block3"].seed).eval().to(device)
    x = x.to(device)
    with torch.no_grad():
        assert torch.allclose(exported(x), hand(x), atol=1e-5)
        for _ in range(3):
            exported(x), hand(x)
        ratios, te, th = [], [], []
        for i in range(args.reps):
            pair = [(exported, te), (hand, th)]
            for fn, sink in pair if i % 2 == 0 else pair[::-1]:
                sink.append(timed(fn, x, device))
            ratios.append(te[-1] / th[-1])
    print(f"torch {torch.__version__}, device {device}, batch {args.batch}, {args.reps} interleaved reps")
    print("| model | median ms |")
    print("|---|---|")
    print(f"| exported fossil (.pt2) | {1e3 * statistics.median(te):.2f} |")
    print(f"| hand-written module | {1e3 * statistics.median(th):.2f} |")
    print(f"ratio exported / hand-written (median of pairs): {statistics.median(ratios):.3f}")


if __name__ == "__main__":
    main()
