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
from esper.kasmina.manifest import MANIFEST
from esper.leyline import UsageError
from esper.runs.files import CHECKPOINT, POLICY


def add_arguments(p) -> None:
    p.add_argument("checkpoint", help="a checkpoint directory written by esper.save, or an `esper grow` run directory (its model/)")
    p.add_argument("--format", choices=["pt2", "onnx"], default="pt2")
    p.add_argument("--out", required=True, help="the file to write (e.g. model.pt2)")
    p.add_argument("--finalize", choices=["cull", "fossilize"], help="what to do with seeds still unfinished")
    p.add_argument("--host", help="model file to build the host from (a fresh instance of the saved architecture)")
    p.add_argument(
        "--trust-host-code", action="store_true", help="without --host, build the host by running the factory the checkpoint names"
    )
    p.add_argument("--input-shape", help="example input shape for tracing (default: the checkpoint's)")


def checkpoint_dir(given: str) -> Path:
    """The checkpoint directory `given` names: itself, or the model/ an `esper grow` run
    directory holds; otherwise a UsageError that says where a checkpoint is."""
    path = Path(given)
    if not path.exists():
        raise UsageError(f"no such checkpoint directory: {path}")
    if not path.is_dir() or (path / MANIFEST).is_file():
        return path  # esper.load says what is wrong with a file or a manifest
    if (path / "model" / MANIFEST).is_file():
        print(f"esper export: {path} is a run directory; exporting its model, {path / 'model'}")
        return path / "model"
    if (path / CHECKPOINT).is_file() or (path / POLICY).is_file():
        raise UsageError(
            f"{path} is an `esper train` run: it holds Tamiyo, the policy, not a grown model; "
            f"grow one with `esper grow --policy {path / POLICY} ... --out DIR` and export DIR"
        )
    found = sorted(p.parent for p in path.glob(f"*/{MANIFEST}"))
    where = f"; the checkpoint(s) below it: {', '.join(str(p) for p in found[:4])}" if found else ""
    raise UsageError(f"{path} is not an esper checkpoint (no {MANIFEST}, nor a model/ holding one){where}")


def run(args) -> int:
    checkpoint = checkpoint_dir(args.checkpoint)
    host = load_model_file(args.host)[0] if args.host else None
    mm = esper.load(checkpoint, host=host, trust_host_code=args.trust_host_code)
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
