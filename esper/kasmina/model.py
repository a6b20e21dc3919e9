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

`compile_training()` runs the model's training forward passes under torch.compile
(`CompiledForward`: compiled once per structure; evaluation stays eager).
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import types
import warnings
from typing import ClassVar

import torch
import torch.fx as fx
from torch import nn
from torch._dynamo.utils import counters

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
        object.__setattr__(self, "_compiled", None)
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
        if self._compiled is not None and self.training:
            return self._compiled(*args, **kwargs)
        return self.woven(*args, **kwargs)

    def woven(self, *args, **kwargs):
        """The forward pass itself, host and slots, always eager (what torch.compile traces)."""
        if self.kind == "fx":
            return self._gm(*args, **kwargs)
        with self.plane.routing():
            return self._host(*args, **kwargs)

    def compile_training(self, backend: str = "inductor") -> CompiledForward:
        """From now on training forward passes (the model in train mode) run under
        torch.compile with `backend`, compiled once per structure; returns the
        CompiledForward, whose counts say how often it compiled. A copy of the model runs
        eagerly."""
        if self._compiled is None:
            like = self.parameter_like()
            device = like.device if like is not None else torch.device("cpu")
            object.__setattr__(self, "_compiled", CompiledForward(self, device, backend))
        return self._compiled

    @property
    def compiled(self) -> CompiledForward | None:
        return self._compiled

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
    def __getstate__(self):
        # Compiled code belongs to this object: a copy (FlopMeter's, a deepcopy) runs eagerly.
        return {**self.__dict__, "_compiled": None}

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


class CompiledForward:
    """`mm.woven` under torch.compile, compiled once per structure.

    Dynamo keeps what it compiles on the code object it starts from, and compiles again
    when a guard fails, which every edit that changes what the forward pass runs does (a
    germination, an advance, a fossilization, a cull: the slots' paths and modules, the
    fx graph). Each structure therefore starts from its own copy of one small function:
    its cache holds that structure's graphs alone, so no number of structures, or of
    models in one process, reaches dynamo's recompile limit, and the graphs of a structure
    left behind go with it. A blend's tick changes only buffers and compiles nothing. The
    batch dimension is compiled as a symbol, so that a smaller last batch does not either,
    unless inductor specializes its code on a range of batch sizes (its CPU reductions do):
    `compiles` counts every graph, `structures` the structures they were for.

    On CUDA the graphs replay as CUDA graphs (mode "reduce-overhead") where inductor
    accepts them; each refusal is counted and warned about once (TORCH_LOGS=perf_hints
    says why). On the CPU inductor needs a C++ compiler, checked up front.
    """

    def __init__(self, mm: MorphogeneticModel, device: torch.device, backend: str = "inductor"):
        inductor = backend == "inductor"
        why = why_not_compiled(device) if inductor else None
        if why is not None:
            raise RuntimeError(why)
        self.mm = mm
        self.backend = backend
        self.mode = "reduce-overhead" if inductor and device.type == "cuda" else None
        self.compiles = 0  # graphs dynamo compiled for this model
        self.structures = 0  # structures it ran: the first, and one more after each edit that changed it
        self.cudagraph_refusals = 0
        self._key: tuple | None = None
        self._entry = None

    def structure(self) -> tuple:
        """What the forward pass runs: each slot's stage and modules (a fold adds a slot)."""
        return tuple((i, s.stage, id(s.seed), id(s.blend)) for i, s in self.mm.plane.slots.items())

    def __call__(self, *args, **kwargs):
        key = self.structure()
        if key != self._key:
            self._key, self.structures = key, self.structures + 1
            self._entry = torch.compile(_fresh_entry(), backend=self.backend, mode=self.mode)
            for a in args:  # before the first call, which compiles: any batch size, one graph
                if isinstance(a, torch.Tensor) and a.dim():
                    torch._dynamo.maybe_mark_dynamic(a, 0)
        if self.mode == "reduce-overhead":
            torch.compiler.cudagraph_mark_step_begin()  # each call is a new training step
        graphs, skips = counters["stats"]["unique_graphs"], counters["inductor"]["cudagraph_skips"]
        out = self._entry(self.mm, *args, **kwargs)
        self.compiles += counters["stats"]["unique_graphs"] - graphs
        refused = counters["inductor"]["cudagraph_skips"] - skips
        if refused and self.mode == "reduce-overhead":
            if not self.cudagraph_refusals:
                warnings.warn("torch.compile refused CUDA graphs for this model's forward pass (TORCH_LOGS=perf_hints says why)")
            self.cudagraph_refusals += refused
        return out

    def summary(self) -> dict:
        return {"compiles": self.compiles, "structures": self.structures, "cudagraph_refusals": self.cudagraph_refusals}


def _run_woven(mm, *args, **kwargs):
    return mm.woven(*args, **kwargs)


def _fresh_entry():
    """A new function running `mm.woven`, with its own code object (so its own dynamo cache)."""
    return types.FunctionType(_run_woven.__code__.replace(), _run_woven.__globals__, "compiled_woven")


def why_not_compiled(device: torch.device) -> str | None:
    """Why torch.compile's inductor backend cannot run on `device` here, or None: on the
    CPU it builds C++ and needs a compiler."""
    if device.type != "cpu":
        return None
    from torch._inductor import cpp_builder

    try:
        cpp_builder.get_cpp_compiler()
    except Exception as e:  # inductor's error types differ between torch versions
        return f"compiling on the CPU needs a C++ compiler for torch.compile's inductor backend (g++ or clang++ on PATH): {e}"
    return None


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
    # Unique as a submodule name too: 'stage1+1' and a host's own 'stage1.1' would share one.
    keys = {module_key(t) for t in taken}
    n = 1
    while module_key(f"{base}+{n}") in keys:
        n += 1
    return f"{base}+{n}"
