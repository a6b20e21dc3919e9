"""MorphogeneticModel: a host with one Kasmina plane woven into its forward pass.

The model shares the host's submodules, parameters and buffers under the same names
(nothing is copied), plus one extra child, `plane`, which holds the slots. With every
slot dormant it computes exactly what the host computes.

Two ways to weave the plane in:
  fx    the host's traced graph with a `call_module` to each slot (`graph/rewrite.py`);
        fossils are folded into that graph.
  hooks forward hooks on the host's own modules, for hosts torch.fx cannot trace (placed
        on the graph torch.export finds); they act only while the model (not the bare
        host) is being called.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
from typing import ClassVar

import torch
import torch.fx as fx
from torch import nn

from esper.graph import InjectionPoint
from esper.graph.rewrite import fold_slot, insert_slot_calls, open_slot_after
from esper.kasmina.plane import KasminaPlane, module_key
from esper.leyline import TraceError


class MorphogeneticModel(nn.Module):
    # The host attributes read through the model: what a trainer given the model reads off it
    # (esper.integrations registers the names its trainers need). Any other name the model
    # lacks is an AttributeError, so that a typo does not quietly read a host attribute.
    host_attributes: ClassVar[frozenset[str]] = frozenset()

    @classmethod
    def forward_host_attributes(cls, *names: str) -> None:
        """From now on, `model.NAME` reads `model.host.NAME` for each of `names`, on every model of this class."""
        cls.host_attributes = cls.host_attributes | frozenset(names)

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
        self.plane = KasminaPlane([(p.id, p.shape) for p in points], causal=bool(spec.get("causal")), graph_host=self)
        object.__setattr__(self, "_host", host)
        object.__setattr__(self, "_hooks", [])
        self.kind = kind
        self.spec = spec
        self.points = {p.id: p for p in points}
        self.training = host.training
        # Set by esper.instrument and esper.load: every injection point found, the inputs
        # it traced with, and the host's factory (for checkpoints).
        self.candidates: list[InjectionPoint] = list(points)
        self.example_inputs: tuple = ()
        self.host_factory: str | None = None
        # Plain attributes of the host that its traced graph reads (get_attr of an unregistered tensor).
        object.__setattr__(
            self, "_graph_constants", {n.target.split(".")[0] for n in (graph.nodes if graph is not None else ()) if n.op == "get_attr"}
        )
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

    # ---- graph edits (the plane's GraphHost) ------------------------------------------------
    def fold_fossil(self, slot_id: str) -> str:
        """The fossil in `slot_id` becomes part of the forward pass (fx: `fold_slot`
        replaces the slot's call with its seed's), and a fresh dormant slot opens just after
        it (`open_slot_after`), so the region can keep growing. Returns the new slot's id,
        `BASE+N`: its point (`self.points`) records the original injection point BASE it
        descends from and its generation, so nothing reads the lineage back from the id."""
        old = self.points[slot_id]
        new_id = _next_id(old.base, self.points)
        self.points[new_id] = dataclasses.replace(old, id=new_id, generation=old.generation + 1)
        self.plane.add_slot(new_id, old.shape, after=slot_id)
        if self.kind == "fx":
            node = fold_slot(self._graph, slot_id, f"plane.{module_key(slot_id)}.seed")
            open_slot_after(self._graph, node, new_id, f"plane.{module_key(new_id)}")
            self._recompile()
        else:
            for _, ids, _ in self._hooks:
                if slot_id in ids:
                    ids.insert(ids.index(slot_id) + 1, new_id)
        return new_id

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
            if host is None or not (name in self.host_attributes or name in self.__dict__.get("_graph_constants", ())):
                raise AttributeError(
                    f"{type(self).__name__} has no attribute {name!r} (the host's own attributes are at .host.{name})"
                ) from None
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

    def parameter_like(self) -> torch.Tensor | None:
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


def _next_id(base: str, taken) -> str:
    n = 1
    while f"{base}+{n}" in taken:
        n += 1
    return f"{base}+{n}"
