"""Export for deployment: dormant slots stripped, fossils folded, no esper code left.

The deployable module is a plain `torch.fx.GraphModule` over the host's modules and the
fossils' blueprint modules (fx hosts), or the model itself with every slot inert or
fossilized (hooked hosts); torch.export then lowers either to ATen operations only.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
import torch.fx as fx
from torch import nn

from esper.graph.rewrite import strip_dormant
from esper.kasmina.model import MorphogeneticModel
from esper.leyline import ExportError, SeedStage

PENDING = (SeedStage.GERMINATED, SeedStage.TRAINING, SeedStage.BLENDING)


def pending_slots(mm: MorphogeneticModel) -> list[str]:
    return [i for i, s in mm.plane.slots.items() if s.stage in PENDING]


def finalize(mm: MorphogeneticModel, how: str) -> MorphogeneticModel:
    """A copy of `mm` in which every unfinished seed is culled or fossilized."""
    if how not in ("cull", "fossilize"):
        raise ValueError(f"finalize must be 'cull' or 'fossilize', not {how!r}")
    done = copy.deepcopy(mm)
    for slot_id in pending_slots(done):
        if how == "cull":
            done.plane.cull(slot_id)
            continue
        while done.plane.slot(slot_id).stage is not SeedStage.FOSSILIZED:
            done.plane.advance(slot_id)
    return done


def deployable(mm: MorphogeneticModel, finalize_with: str | None = None) -> nn.Module:
    """A plain module computing what `mm` computes, without slots. Refuses unfinished seeds
    unless `finalize_with` says what to do with them."""
    pending = pending_slots(mm)
    if pending and finalize_with is None:
        stages = ", ".join(f"{i} ({mm.plane.slot(i).stage.name})" for i in pending)
        raise ExportError(
            f"cannot export while seeds are unfinished: {stages}. Advance them to FOSSILIZED or cull "
            "them first, or export with --finalize cull (drop them) or --finalize fossilize (keep them at alpha 1)"
        )
    if pending:
        mm = finalize(mm, finalize_with)
    if mm.kind != "fx":
        return copy.deepcopy(mm).eval()
    graph = strip_dormant(copy.deepcopy(mm.graph), keep=lambda slot_id: False)
    gm = fx.GraphModule(mm, graph, f"Fossil{type(mm.host).__name__}")
    gm.graph.lint()
    return gm.eval()


def export(mm: MorphogeneticModel, example_inputs, path: str | Path, format: str = "pt2", finalize: str | None = None) -> Path:
    """Write the deployable model to `path` as a torch.export program (.pt2) or ONNX."""
    args = tuple(example_inputs) if isinstance(example_inputs, (tuple, list)) else (example_inputs,)
    module = deployable(mm, finalize)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if format == "pt2":
        program = torch.export.export(module, args, strict=False)
        torch.export.save(program, str(path))
    elif format == "onnx":
        try:
            import onnx  # noqa: F401
        except ImportError as e:
            raise ExportError("ONNX export needs the onnx extra: pip install 'esper[onnx]'") from e
        torch.onnx.export(module, args, str(path), dynamo=True)
    else:
        raise ExportError(f"unknown export format {format!r}; use 'pt2' or 'onnx'")
    return path


def parameter_report(mm: MorphogeneticModel) -> dict:
    """Parameters of the host, of each fossil, and in total."""
    fossils = {i: s.param_count() for i, s in mm.plane.slots.items() if s.stage is SeedStage.FOSSILIZED}
    host = mm.host_parameter_count()
    return {"host": host, "fossils": fossils, "total": host + sum(fossils.values())}
