"""MorphogeneticModel: a host with one Kasmina plane woven into its forward pass.

The model shares the host's submodules, parameters and buffers under the same names
(nothing is copied), plus one extra child, `plane`, which holds the slots. With every
slot dormant it computes exactly what the host computes.

Two ways to weave the plane in:
  fx    the host's traced graph with a `call_module` to each slot (`graph/rewrite.py`);
        fossils are folded into that graph.
  hooks forward hooks on the host's own modules, for hosts torch.fx cannot trace; the
        hooks act only while the model (not the bare host) is being called.
"""

from __future__ import annotations

import copy
import functools

import torch
import torch.fx as fx
from torch import nn

from esper.graph import InjectionPoint
from esper.graph.rewrite import fold_slot, insert_slot_calls, open_slot_after, slot_nodes
from esper.kasmina.plane import KasminaPlane, module_key
from esper.leyline import Edit, Op, SeedStage, TraceError


class MorphogeneticModel(nn.Module):
    def __init__(self, host: nn.Module, points: list[InjectionPoint], kind: str, graph: fx.Graph | None, spec: dict):
        super().__init__()
        if "plane" in host._modules or hasattr(type(host), "plane"):
            raise TraceError(f"{type(host).__name__} already has an attribute 'plane'", hint="rename it")
        for name, child in host._modules.items():
            self.add_module(name, child)
        for name, p in host._parameters.items():
            self.register_parameter(name, p)
        for name, b in host._buffers.items():
            self.register_buffer(name, b, persistent=name not in host._non_persistent_buffers_set)
        self.plane = KasminaPlane([(p.id, p.shape) for p in points], causal=bool(spec.get("causal")))
        object.__setattr__(self, "_host", host)
        object.__setattr__(self, "_hooks", [])
        self.kind = kind
        self.spec = spec
        self.points = {p.id: p for p in points}
        self.training = host.training
        self.plane._anchor = self._first_tensor
        self.plane._listeners.append(self._on_edit)
        if kind == "fx":
            object.__setattr__(self, "_graph", insert_slot_calls(copy.deepcopy(graph), points, lambda p: f"plane.{module_key(p.id)}"))
            self._recompile()
        else:
            for p in points:
                self._hook(p.module, [p.id])

    # ---- forward -----------------------------------------------------------------------
    def forward(self, *args, **kwargs):
        if self.kind == "fx":
            return self._gm(*args, **kwargs)
        with self.plane.routing():
            return self._host(*args, **kwargs)

    def _recompile(self) -> None:
        gm = fx.GraphModule(self, self._graph, f"Morphogenetic{type(self._host).__name__}")
        gm.graph.lint()
        object.__setattr__(self, "_gm", gm)

    def _hook(self, module_path: str, slot_ids: list[str]) -> None:
        module = self._host.get_submodule(module_path)
        handle = module.register_forward_hook(functools.partial(_route, self.plane, slot_ids))
        self._hooks.append((module_path, slot_ids, handle))

    # ---- graph edits ----------------------------------------------------------------------
    def _on_edit(self, edit: Edit) -> None:
        """A fossil is folded into the graph, and a fresh dormant slot opens just after it,
        so the region can keep growing."""
        if edit.op not in (Op.FOSSILIZE, Op.ADVANCE) or self.plane.slot(edit.slot).stage is not SeedStage.FOSSILIZED:
            return
        old = self.points[edit.slot]
        new_id = _next_id(edit.slot, self.points)
        new = InjectionPoint(new_id, old.node, old.module, old.modules, old.shape, old.depth, old.index)
        self.points[new_id] = new
        self.plane.add_slot(new_id, old.shape, after=edit.slot)
        if self.kind == "fx":
            node = fold_slot(self._graph, edit.slot, f"plane.{module_key(edit.slot)}.seed")
            open_slot_after(self._graph, node, new_id, f"plane.{module_key(new_id)}")
            self._recompile()
        else:
            for path, ids, _ in self._hooks:
                if edit.slot in ids:
                    ids.insert(ids.index(edit.slot) + 1, new_id)

    # ---- nn.Module plumbing -------------------------------------------------------------------
    def train(self, mode: bool = True):
        super().train(mode)
        self._host.training = mode
        return self

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            host = self.__dict__.get("_host")
            if host is None:
                raise
            return getattr(host, name)

    @property
    def host(self) -> nn.Module:
        """The original host (sharing its weights with this model)."""
        return self._host

    @property
    def graph(self) -> fx.Graph | None:
        return self._graph if self.kind == "fx" else None

    @property
    def code(self) -> str:
        return self._gm.code if self.kind == "fx" else ""

    def slot_nodes(self) -> dict[str, fx.Node]:
        return slot_nodes(self._graph) if self.kind == "fx" else {}

    def _first_tensor(self) -> torch.Tensor | None:
        """Where new seeds live: the device and dtype of the host's first parameter."""
        for t in self._host.parameters():
            return t
        return next((b for b in self._host.buffers() if b.is_floating_point()), None)

    def host_parameter_count(self) -> int:
        return sum(p.numel() for p in self._host.parameters())


def _route(plane: KasminaPlane, slot_ids: list[str], module, inputs, output):
    if not plane.is_routing:
        return None
    if isinstance(output, torch.Tensor):
        for slot_id in slot_ids:
            output = plane.slot(slot_id)(output)
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        first = output[0]
        for slot_id in slot_ids:
            first = plane.slot(slot_id)(first)
        return type(output)([first, *output[1:]])
    return None


def _next_id(slot_id: str, taken) -> str:
    base = slot_id.split("+")[0]
    n = 1
    while f"{base}+{n}" in taken:
        n += 1
    return f"{base}+{n}"
