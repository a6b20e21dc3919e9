"""`esper instrument MODEL.py`: place seed slots and print where they went."""

from __future__ import annotations

import json
from pathlib import Path

import torch
import yaml

import esper
from esper.cli.loading import example_input
from esper.graph import load_spec
from esper.kasmina.blending import blend_names
from esper.kasmina.blueprints import blueprint_names, blueprint_ranks, blueprints_for, param_count, why_unfit
from esper.kasmina.causality import has_sequence_axis
from esper.kasmina.hosts import load_model_file
from esper.leyline import InputError, UsageError


def add_arguments(p) -> None:
    p.add_argument("model", help="a Python file defining build_model(), `model`, or one nn.Module class")
    p.add_argument("--input-shape", help="example input shape, batch first (default: the file's example_input, else 1,3,32,32)")
    p.add_argument("--max-slots", type=int, help="at most this many slots")
    p.add_argument("--spec", help="a YAML slot spec to follow (include/exclude globs, names, or exact slots)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--blueprints", action="store_true", help="also print what each blueprint would add at each slot")
    p.add_argument("--out", help="write the resolved slot spec here (default: MODEL_STEM.slots.yaml; '-' to skip)")


def run(args) -> int:
    model, example = load_model_file(args.model)
    source = "the file's example_input (give another with --input-shape)"
    if args.input_shape:
        example, source = example_input(args.input_shape), f"--input-shape {args.input_shape}"
    elif example is None:
        example, source = torch.randn(1, 3, 32, 32), "the default input 1,3,32,32 (give another with --input-shape)"
    try:
        mm = esper.instrument(model, (example,), max_slots=args.max_slots, spec=args.spec)
    except InputError as e:
        raise UsageError(f"{source}: {e}") from e
    except FileNotFoundError as e:
        raise UsageError(str(e)) from e
    rows = [
        {"id": slot_id, "target": mm.points[slot_id].module, "shape": list(slot.shape), "depth": mm.points[slot_id].depth}
        for slot_id, slot in mm.plane.slots.items()
    ]
    out = args.out or f"{Path(args.model).stem}.slots.yaml"
    if out != "-":
        Path(out).write_text(yaml.safe_dump(mm.spec, sort_keys=False))
    if args.json:
        slots = [{k: r[k] for k in ("id", "target", "shape")} for r in rows]
        print(json.dumps({"slots": slots, "params": mm.host_parameter_count(), "trace": mm.kind, "causal": mm.plane.causal}))
        return 0
    print(
        f"{type(model).__name__}: {mm.host_parameter_count():,} parameters, traced with {mm.kind}, "
        f"{len(rows)} slots of {len(mm.candidates)} candidate points"
    )
    how = "as the spec says" if args.spec and load_spec(args.spec).get("causal") is not None else "probed"
    if mm.plane.causal:
        safe = sorted({name for slot in mm.plane.slots.values() for name in blueprints_for(slot.shape, causal=True)})
        print(
            f"causal along the sequence ({how}): only causal-safe blueprints ({', '.join(safe)}) "
            f"and blends ({', '.join(blend_names(causal=True))}) may grow"
        )
    elif has_sequence_axis(example):
        print(f"not causal along the sequence ({how}): every blueprint may grow where it can act")
    else:
        print("no sequence axis in the input: every blueprint may grow where it can act")
    w_id = max(len("slot"), *(len(r["id"]) for r in rows))
    w_at = max(len("after module"), *(len(r["target"]) for r in rows))
    print(f"{'slot':<{w_id}}  {'after module':<{w_at}}  {'shape':<20}  depth")
    for r in rows:
        print(f"{r['id']:<{w_id}}  {r['target']:<{w_at}}  {str(tuple(r['shape'])):<20}  {r['depth']}")
    if args.blueprints:
        _print_blueprint_costs(mm)
    if out != "-":
        print(f"slot spec written to {out}")
    return 0


def _print_blueprint_costs(mm) -> None:
    print("\nparameters each blueprint adds at each slot:")
    for slot_id, slot in mm.plane.slots.items():
        names = blueprints_for(slot.shape, causal=mm.plane.causal)
        costs = ", ".join(f"{n} {param_count(n, slot.shape):,}" for n in names)
        print(f"  {slot_id}: {costs or 'no blueprint fits'}")
        for name in blueprint_names():
            reason = why_unfit(name, slot.shape)
            if reason is not None and len(slot.shape) in blueprint_ranks(name):
                print(f"    not {name}: {reason}")
