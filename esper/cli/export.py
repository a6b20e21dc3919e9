"""`esper export CHECKPOINT`: write the fossilized model for deployment."""

from __future__ import annotations

from pathlib import Path

import torch

import esper
from esper.cli.loading import load_model_file, parse_shape
from esper.cli.main import UsageError
from esper.kasmina.export import parameter_report
from esper.leyline import CheckpointError, ExportError


def add_arguments(p) -> None:
    p.add_argument("checkpoint", help="a checkpoint directory written by esper.save / esper grow")
    p.add_argument("--format", choices=["pt2", "onnx"], default="pt2")
    p.add_argument("--out", required=True, help="the file to write (e.g. model.pt2)")
    p.add_argument("--finalize", choices=["cull", "fossilize"], help="what to do with seeds still unfinished")
    p.add_argument("--host", help="model file to build the host from, when the checkpoint names no factory")
    p.add_argument("--input-shape", help="example input shape for tracing (default: the checkpoint's)")


def run(args) -> int:
    host = load_model_file(args.host)[0] if args.host else None
    try:
        mm = esper.load(args.checkpoint, host=host)
    except CheckpointError as e:
        raise UsageError(str(e)) from e
    example = mm.example_inputs
    if args.input_shape:
        example = (torch.randn(parse_shape(args.input_shape)),)
    mm.eval()
    try:
        path = esper.export(mm, example, args.out, format=args.format, finalize=args.finalize)
    except ExportError as e:
        raise UsageError(str(e)) from e
    report = parameter_report(mm)
    print(f"host parameters      {report['host']:>12,}")
    for slot_id, n in report["fossils"].items():
        print(f"fossil {slot_id:<14}{n:>12,}")
    print(f"total                {report['total']:>12,}")
    print(f"wrote {path} ({Path(path).stat().st_size / 1e6:.2f} MB, {args.format})")
    return 0
