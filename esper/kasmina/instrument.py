"""`instrument`: trace a host, find its injection points, and weave in a Kasmina plane."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

from esper.graph import find_injection_points, load_spec, select_points, spec_for, trace
from esper.graph.analysis import InjectionPoint
from esper.graph.modes import eval_mode
from esper.kasmina.causality import output_tensors, probe_causality
from esper.kasmina.model import MorphogeneticModel
from esper.leyline import TraceError


def instrument(
    model: nn.Module,
    example_inputs,
    max_slots: int | None = None,
    spec: str | Path | dict | None = None,
    prefer: str = "fx",
) -> MorphogeneticModel:
    """Place dormant seed slots in `model` and return the instrumented model.

    The result shares the host's weights, has exactly its parameters and buffers, and
    computes exactly what it computes until a seed germinates. A real forward pass over
    `example_inputs` checks that before the model is returned.

    Whether the host is causal along its sequence axis is probed (esper.kasmina.causality)
    unless the spec says (`causal: true|false`); the answer is in `mm.spec` and
    `mm.plane.causal`, and on a causal host only causal-safe seeds may grow.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"instrument needs an nn.Module, got {type(model).__name__}")
    args = tuple(example_inputs) if isinstance(example_inputs, (tuple, list)) else (example_inputs,)
    if not args or not isinstance(args[0], torch.Tensor):
        raise TypeError("example_inputs must start with a tensor (batch first)")
    spec = load_spec(spec)
    config = getattr(model, "config", None)
    if getattr(config, "use_cache", False):
        # A key/value cache in the output defeats torch.export, and a model that is still
        # growing trains without one.
        warnings.warn(f"{type(model).__name__}: setting config.use_cache = False for instrumentation", stacklevel=2)
        config.use_cache = False
    result = trace(model, args, prefer=prefer)
    points = find_injection_points(result.graph, result.input_node, batch=args[0].shape[0])
    if result.kind == "export":
        points = _hookable(model, args, points)
    if not points:
        raise TraceError(
            f"found no injection point in {type(model).__name__}: no block output of rank >= 3 lies on every input-to-output path",
            hint="check that the model's blocks are nn.Modules and its activations are batch first",
        )
    chosen = select_points(points, max_slots=max_slots, spec=spec)
    if spec.get("causal") is None:
        spec = {**spec, "causal": probe_causality(model, args)}
    resolved = spec_for(chosen, points, causal=spec["causal"])
    # A graph torch.export found is read for placement only: the slots go on as forward hooks.
    weave = "fx" if result.kind == "fx" else "hooks"
    mm = MorphogeneticModel(model, chosen, weave, result.graph if result.kind == "fx" else None, resolved)
    mm.candidates = points
    mm.example_inputs = args
    if not _same_outputs(model, mm, args):
        if result.kind == "fx":
            return instrument(model, args, max_slots=max_slots, spec=spec, prefer="export")
        raise TraceError(f"instrumented {type(model).__name__} does not reproduce the host's output", hint="report this model")
    for slot in mm.plane.slots.values():
        slot.reset_statistics()
    return mm


def _hookable(model: nn.Module, args: tuple, points: list[InjectionPoint]) -> list[InjectionPoint]:
    """Keep the points some module's output carries directly (a tensor, or a tuple led by
    one), called once per forward, so a forward hook can route it through a slot."""
    calls: dict[str, list] = {}
    handles = []
    for p in points:
        for path in p.modules:
            if path in calls:
                continue
            calls[path] = []
            mod = model.get_submodule(path)
            handles.append(mod.register_forward_hook(lambda m, i, o, path=path: calls[path].append(_lead_shape(o))))
    try:
        with eval_mode(model), torch.no_grad():
            model(*args)
    finally:
        for h in handles:
            h.remove()
    kept = []
    for p in points:
        for path in p.modules:  # outermost first: hook the largest block that ends here
            if calls[path] == [p.shape]:
                ident = p.id if path == p.modules[0] else path
                kept.append(InjectionPoint(ident, p.node, path, p.modules, p.shape, path.count(".") + 1, len(kept)))
                break
    return kept


def _lead_shape(out):
    if isinstance(out, torch.Tensor):
        return tuple(out.shape)
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return tuple(out[0].shape)
    return None


def _same_outputs(host: nn.Module, mm: MorphogeneticModel, args: tuple) -> bool:
    with eval_mode(host), eval_mode(mm), torch.no_grad():
        a, b = output_tensors(host(*args)), output_tensors(mm(*args))
    return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b))
