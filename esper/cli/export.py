"""`esper export CHECKPOINT`: write the fossilized model for deployment.

The checkpoint's host is rebuilt from --host (a model file you chose), or, with
--trust-host-code, from the factory its manifest names: that runs code the checkpoint
chose, so trust it only for checkpoints you made or trust.
"""

from __future__ import annotations

from pathlib import Path

import esper
from esper.cli.loading import example_input
from esper.kasmina.export import finalize, parameter_report, pending_slots
from esper.kasmina.hosts import load_model_file


def add_arguments(p) -> None:
    p.add_argument("checkpoint", help="a checkpoint directory written by esper.save / esper grow")
    p.add_argument("--format", choices=["pt2", "onnx"], default="pt2")
    p.add_argument("--out", required=True, help="the file to write (e.g. model.pt2)")
    p.add_argument("--finalize", choices=["cull", "fossilize"], help="what to do with seeds still unfinished")
    p.add_argument("--host", help="model file to build the host from (a fresh instance of the saved architecture)")
    p.add_argument(
        "--trust-host-code", action="store_true", help="without --host, build the host by running the factory the checkpoint names"
    )
    p.add_argument("--input-shape", help="example input shape for tracing (default: the checkpoint's)")


def run(args) -> int:
    host = load_model_file(args.host)[0] if args.host else None
    mm = esper.load(args.checkpoint, host=host, trust_host_code=args.trust_host_code)
    example = (example_input(args.input_shape),) if args.input_shape else mm.example_inputs
    mm.eval()
    if args.finalize and pending_slots(mm):
        mm = finalize(mm, args.finalize)  # so that the counts below are those of what is written
    path = esper.export(mm, example, args.out, format=args.format)
    report = parameter_report(mm)
    print(f"host parameters      {report['host']:>12,}")
    for slot_id, n in report["fossils"].items():
        print(f"fossil {slot_id:<14}{n:>12,}")
    print(f"total                {report['total']:>12,}")
    print(f"wrote {path} ({Path(path).stat().st_size / 1e6:.2f} MB, {args.format})")
    return 0
