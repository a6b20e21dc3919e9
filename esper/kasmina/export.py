"""Export for deployment: dormant slots stripped, fossils folded, no esper code left.

The deployable module is a plain `torch.fx.GraphModule` over the host's modules and the
fossils' blueprint modules (fx hosts), or the model itself with every slot inert or
fossilized (hooked hosts); torch.export then lowers either to ATen operations only.
"""

from __future__ import annotations

import copy
import inspect
import warnings
from pathlib import Path

import torch
import torch.fx as fx
from torch import nn

from esper.graph.rewrite import strip_dormant
from esper.kasmina.model import MorphogeneticModel
from esper.leyline import ACTIVE_STAGES, ExportError, SeedStage


def pending_slots(mm: MorphogeneticModel) -> list[str]:
    """Slots whose seed is live: neither fossilized nor gone, so export must decide."""
    return [i for i, s in mm.plane.slots.items() if s.stage in ACTIVE_STAGES]


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
    """Write the deployable model to `path` as a torch.export program (.pt2) or ONNX.

    A .pt2 program takes any batch size (and, for token-id inputs, any sequence length)
    unless the host's own code fixes it; then it keeps the example's shapes, with a warning."""
    args = tuple(example_inputs) if isinstance(example_inputs, (tuple, list)) else (example_inputs,)
    path = Path(path)
    if path.is_dir():
        raise ExportError(f"{path} is a directory: give the file to write, e.g. {path / ('model.' + format)}")
    module = deployable(mm, finalize)
    path.parent.mkdir(parents=True, exist_ok=True)
    if format == "pt2":
        torch.export.save(_program(module, args), str(path))
    elif format == "onnx":
        try:
            import onnx  # noqa: F401
        except ImportError as e:
            raise ExportError("ONNX export needs the onnx extra: pip install 'esper[onnx]'") from e
        torch.onnx.export(module, args, str(path), dynamo=True)
    else:
        raise ExportError(f"unknown export format {format!r}; use 'pt2' or 'onnx'")
    return path


def _program(module: nn.Module, args: tuple) -> torch.export.ExportedProgram:
    """An exported program with the batch dimension, and a token input's sequence
    dimension, left dynamic where the module allows."""
    dims = tuple(_dynamic_dims(a) for a in args)
    wide = tuple(_widened(a, d) for a, d in zip(args, dims))
    varargs = any(p.kind is p.VAR_POSITIONAL for p in inspect.signature(module.forward).parameters.values())
    try:
        return torch.export.export(module, wide, dynamic_shapes=(dims,) if varargs else dims, strict=False)
    except Exception as e:  # the host's code fixes a size: keep the example's shapes, and say so
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        warnings.warn(f"exported with the example's fixed input shapes, since a dynamic batch did not export: {first}", stacklevel=3)
        return torch.export.export(module, args, strict=False)


def _dynamic_dims(a) -> dict | None:
    if not isinstance(a, torch.Tensor) or a.dim() == 0:
        return None
    dims = {0: torch.export.Dim.DYNAMIC}
    if not a.is_floating_point() and a.dim() == 2:  # token ids: batch x sequence
        dims[1] = torch.export.Dim.DYNAMIC
    return dims


def _widened(a, dims: dict | None):
    """`a` with each dynamic size of 1 repeated to 2: torch.export specializes sizes of 1."""
    if not dims:
        return a
    return a.repeat(*(2 if i in dims and n == 1 else 1 for i, n in enumerate(a.shape)))


def parameter_report(mm: MorphogeneticModel) -> dict:
    """Parameters of the host, of each fossil, and in total."""
    fossils = {i: s.param_count() for i, s in mm.plane.slots.items() if s.stage is SeedStage.FOSSILIZED}
    host = mm.host_parameter_count()
    return {"host": host, "fossils": fossils, "total": host + sum(fossils.values())}
