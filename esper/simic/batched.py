"""K environments' hosts trained as one model: host layers vmapped, each seed on its own slice.

    cache = StackCache()                          # the cut graph, kept across decisions
    results = step_together(envs, edits, cache)   # what VectorEnv.step does with runner="batched"

The K hosts share one architecture; their seeds differ. The model's graph is cut at the
slots (`host_graph`): every run of host nodes between two slots becomes a segment, and
each slot (with any fossils folded in before it) becomes a site.

    Before (one environment's graph)             After (the K environments together)

    x -> block1 -> plane.block1 -> pool -> ...   x[K,B] -> vmap(segment_0)[K,B] -> site block1 -> ...
                                                 site: out[k] = env k's plane.block1(h[k]), stacked

A segment runs once for all K environments: `torch.func.functional_call` with the
hosts' parameters stacked along a new leading dimension, under `torch.func.vmap` (which
turns the K convolutions into one grouped convolution). A site splits the activation
into its K slices and calls each environment's own slot modules on its slice, so seeds,
blends, the NaN guard and the slot statistics are exactly the ones the sequential runner
uses. Losses are summed over environments, each the mean over its own batch, so every
environment's gradients are the ones it would have alone.

The training loop is the sequential runner's own (`host_training.train_chunks`): this
module supplies only the vmapped forward pass, its loss sum and the stacked hosts'
optimizer step; gradient clearing, the NaN guard, seed learning rates and each
environment's optimizer and schedule steps are shared code. The stacked host optimizer
is the environments' own kind (`make_optimizer`) with their state: AdamW and SGD act
element by element, so stacking does not change their arithmetic. Seeds keep their
environment's optimizer, which holds no gradient for the host parameters here and so
leaves them to the stacked one.

The cut is kept across decisions (`StackCache`) until a fossilization changes it or the
environments are reset. The hosts' parameters, buffers and optimizer state are copied
in before each chunk and written back after it: between steps every environment is
exactly what `GrowthEnv.step` leaves, so evaluation, the ablation probe, checkpoints and
the sequential runner work on it unchanged.

Not batched: hosts woven in with hooks (no graph to cut), environments with different
host architectures or training settings (`batching_problem` says which), and random
operations in the host's forward pass, which draw per environment but not from the
environment's own stream.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Iterator, Sequence

import torch
import torch.fx as fx
from torch.func import functional_call, vmap
from torch.fx.passes.split_module import split_module

from esper.kasmina.plane import module_key
from esper.leyline import Edit
from esper.simic.host_training import make_optimizer, train_chunks

PLANE = "plane."
# The stacked hosts take one optimizer step, with one schedule, for all K environments.
SAME_SETTINGS = (
    "batch_size",
    "decisions_per_epoch",
    "epochs",
    "optimizer",
    "lr",
    "lr_schedule",
    "lr_floor",
    "momentum",
    "weight_decay",
    "precision",
    "augment",
)


def _plane_calls(mm, graph: fx.Graph) -> dict[str, list[fx.Node]]:
    """Per original injection point, the nodes of `graph` that call into the plane there, in
    order: the slot itself, or fossils folded in ('plane.<key>.seed') followed by the slot
    opened after them."""
    slot_of = {module_key(slot_id): slot_id for slot_id in mm.plane.slots}
    chains: dict[str, list[fx.Node]] = {}
    for node in graph.nodes:
        if node.op == "call_module" and node.target.startswith(PLANE):
            base = mm.points[slot_of[node.target[len(PLANE) :].split(".")[0]]].base
            chains.setdefault(base, []).append(node)
    return chains


def slot_chains(mm) -> dict[str, list[str]]:
    """Per original injection point, the plane modules the model's graph calls there."""
    return {base: [node.target for node in nodes] for base, nodes in _plane_calls(mm, mm.graph).items()}


def host_graph(mm) -> tuple[fx.Graph, dict[str, str]]:
    """The model's graph with each chain of plane calls collapsed into one site node.

    Before:  act -> %fossil_block1 = plane.block1.seed -> %slot_block1_1 = plane.block1+1 -> pool
    After:   act -> %plane_block1 = plane.block1                                        -> pool

    Returns the graph and {site node name: injection point}. Every environment grown
    from the same host gives the same graph, whatever its seeds.
    """
    graph = copy.deepcopy(mm.graph)
    sites = {}
    for base, nodes in _plane_calls(mm, graph).items():
        with graph.inserting_before(nodes[0]):
            site = graph.call_module(PLANE + module_key(base), (nodes[0].args[0],))
        nodes[-1].replace_all_uses_with(site)
        for node in reversed(nodes):
            graph.erase_node(node)
        sites[site.name] = base
    return graph, sites


def batching_problem(envs) -> str | None:
    """Why these (reset) environments cannot be trained together, or None if they can."""
    models = [env.mm for env in envs]
    if any(mm.kind != "fx" for mm in models):
        return "the host is woven in with hooks (torch.fx could not trace it), so there is no graph to cut at the slots"
    if envs[0].ranks.spread:
        return "a distributed run trains one environment's shards per rank"
    if len({env.device for env in envs}) > 1:
        return "the environments are on different devices"
    for name in SAME_SETTINGS:
        if len({getattr(env.cfg, name) for env in envs}) > 1:
            return f"the environments train with different {name}"
    if (
        envs[0].cfg.precision == "bf16"
        and envs[0].device.type == "cuda"
        and any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in models[0].host.modules())
    ):
        # torch's vmap rule for BatchNorm's backward wants the fp32 running statistics in
        # the bf16 of autocast's activations (torch 2.11 and 2.14 alike).
        return "BatchNorm under bf16 autocast has no vmap rule for its backward pass; use fp32"
    shapes = {str(host_graph(mm)[0]) + repr([(n, p.shape) for n, p in mm.host.named_parameters()]) for mm in models}
    if len(shapes) > 1:
        return "the hosts differ in architecture"
    return None


def structure(models: Sequence) -> tuple:
    """What a StackedHosts is cut from: the models themselves and the plane modules each
    one's graph calls at each injection point. A fossilization changes the latter (the
    seed folds into the chain and a slot opens after it); a germination or a cull changes
    only what a slot module holds, which the sites call live, and no edit changes a
    host's own parameters."""
    return tuple((id(mm), tuple((t, id(mm.get_submodule(t))) for targets in slot_chains(mm).values() for t in targets)) for mm in models)


class StackedHosts:
    """K models' host layers as one vmapped module, with their parameters, buffers and host
    optimizer state stacked along a new leading dimension; see the module docstring.

    The cut (segments, sites, name maps) is made once; `load` copies the models' current
    values in before a chunk and `store` writes the trained ones back after it."""

    def __init__(self, models: Sequence, cfg):
        self.models = list(models)
        graph, site_nodes = host_graph(self.models[0])
        root = fx.GraphModule(self.models[0], graph)
        count, part, self.sites = 0, {}, {}
        for node in graph.nodes:
            if node.name in site_nodes:
                part[node.name] = 2 * count + 1
                self.sites[f"submod_{2 * count + 1}"] = site_nodes[node.name]
                count += 1
            else:
                part[node.name] = 2 * count
        self.top = split_module(root, self.models[0], lambda node: part[node.name], keep_original_order=True)
        self.segments = {name: mod for name, mod in self.top.named_children() if name not in self.sites}
        # split_module may rename submodules ('block1.0' -> 'block1_0') but shares their
        # tensors: each segment's own names map to the model's by identity.
        names = {id(t): n for n, t in [*self.models[0].named_parameters(), *self.models[0].named_buffers()]}
        self.names = {
            seg: {own: names[id(t)] for own, t in [*mod.named_parameters(), *mod.named_buffers()]} for seg, mod in self.segments.items()
        }
        self.param_names = sorted({names[id(t)] for mod in self.segments.values() for _, t in mod.named_parameters()})
        self.buffer_names = sorted({names[id(t)] for mod in self.segments.values() for _, t in mod.named_buffers()})
        self.chains = [{base: [mm.get_submodule(t) for t in targets] for base, targets in slot_chains(mm).items()} for mm in self.models]
        with torch.no_grad():
            self.params = {n: torch.stack([mm.get_parameter(n) for mm in self.models]).requires_grad_() for n in self.param_names}
            self.buffers = {n: torch.stack([mm.get_buffer(n) for mm in self.models]) for n in self.buffer_names}
        # The environments' own optimizer kind and settings (`make_optimizer`); AdamW and SGD
        # act element by element, so stacking does not change their arithmetic.
        self.optimizer = make_optimizer([self.params[n] for n in self.param_names], cfg)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """The K models' outputs (K, ...) for their inputs x (K, ...)."""
        values: dict[str, object] = {}
        for node in self.top.graph.nodes:
            if node.op == "placeholder":
                values[node.name] = x
            elif node.op == "output":
                return fx.node.map_arg(node.args[0], lambda n: values[n.name])
            elif node.op == "call_module" and node.target in self.sites:
                values[node.name] = self._site(self.sites[node.target], values[node.args[0].name])
            elif node.op == "call_module":
                args = fx.node.map_arg(node.args, lambda n: values[n.name])
                values[node.name] = self._segment(node.target, args)
            else:  # getitem on a segment's tuple of outputs
                args = fx.node.map_arg(node.args, lambda n: values[n.name])
                values[node.name] = node.target(*args)
        raise RuntimeError("the split graph has no output")

    def _segment(self, name: str, args: tuple) -> object:
        module = self.segments[name]
        names = self.names[name]
        params = {own: self.params[names[own]] for own, _ in module.named_parameters()}
        buffers = {own: self.buffers[names[own]] for own, _ in module.named_buffers()}
        dims = tuple(0 if isinstance(a, torch.Tensor) else None for a in args)

        def call(p, b, *a):
            return functional_call(module, (p, b), a)

        return vmap(call, in_dims=(0, 0, *dims), randomness="different")(params, buffers, *args)

    def _site(self, base: str, h: torch.Tensor) -> torch.Tensor:
        slices = list(h.unbind())
        outs = []
        for chain, piece in zip(self.chains, slices):
            for module in chain[base]:
                piece = module(piece)
            outs.append(piece)
        if all(o is s for o, s in zip(outs, slices)):
            return h  # every slot passed its slice through: no copy
        return torch.stack([o.to(h.dtype) for o in outs])  # a seed may answer autocast with another dtype

    def step(self, lr: float) -> None:
        """The stacked host parameters' optimizer step, at the environments' host rate."""
        self.optimizer.param_groups[0]["lr"] = lr
        self.optimizer.step()

    @torch.no_grad()
    def load(self, trainers: Sequence) -> None:
        """The models' host parameters and buffers, and their optimizers' state for them
        (host parameters are all in each optimizer's first group), stacked in."""
        for n in self.param_names:
            self.params[n].copy_(torch.stack([mm.get_parameter(n) for mm in self.models]))
            states = [t.optimizer.state.get(mm.get_parameter(n)) for t, mm in zip(trainers, self.models)]
            if states[0]:
                self.optimizer.state[self.params[n]] = {
                    key: torch.stack([s[key] for s in states]) if _per_element(v) else _copy(v) for key, v in states[0].items()
                }
            else:
                self.optimizer.state.pop(self.params[n], None)
        for n in self.buffer_names:
            self.buffers[n].copy_(torch.stack([mm.get_buffer(n) for mm in self.models]))

    @torch.no_grad()
    def store(self, trainers: Sequence) -> None:
        """The trained stacked values written back into each model and its optimizer."""
        for k, (trainer, mm) in enumerate(zip(trainers, self.models)):
            for n in self.param_names:
                p = mm.get_parameter(n)
                p.copy_(self.params[n][k])
                state = self.optimizer.state.get(self.params[n])
                if state:
                    trainer.optimizer.state[p] = {key: v[k].clone() if _per_element(v) else _copy(v) for key, v in state.items()}
            for n in self.buffer_names:
                mm.get_buffer(n).copy_(self.buffers[n][k])


def _per_element(v) -> bool:
    return isinstance(v, torch.Tensor) and v.dim() > 0


def _copy(v):
    return v.clone() if isinstance(v, torch.Tensor) else v


class StackCache:
    """The StackedHosts of one set of K environments, kept from one decision to the next
    while their `structure` stays the same, so the graph is cut and its segments compiled
    once per structure rather than once per decision. Values are copied in and out around
    every chunk all the same: evaluation, the ablation probe, checkpoints and the
    sequential runner read the environments between chunks, and copying host-sized
    tensors costs about one optimizer step per chunk."""

    def __init__(self):
        self._key: tuple | None = None
        self.hosts: StackedHosts | None = None  # the last one built

    def __call__(self, envs) -> StackedHosts:
        models = [env.mm for env in envs]
        key = structure(models)
        if key != self._key:
            self.hosts, self._key = StackedHosts(models, envs[0].cfg), key
        return self.hosts


def train_together(envs, chunks: Sequence[Iterator], cache: StackCache | None = None) -> list[tuple[float | None, float | None, int, int]]:
    """Train the K environments' chunks as one (`train_chunks` with the hosts stacked; the
    chunks must hold equally many equally sized batches); returns each environment's
    (mean loss, accuracy, images, training FLOPs). `cache` keeps the stacked hosts between calls."""
    hosts = (cache or StackCache())(envs)
    trainers = [env.trainer for env in envs]
    hosts.load(trainers)

    def forward_backward(batches: list[tuple[torch.Tensor, torch.Tensor]]) -> list:
        x = torch.stack([b[0] for b in batches])
        y = torch.stack([b[1] for b in batches])
        hosts.optimizer.zero_grad(set_to_none=True)
        with trainers[0].autocast():
            out = hosts(x)
            scores = [trainer.task.score(out[k], y[k]) for k, trainer in enumerate(trainers)]
        # Each environment's loss is the mean over its own batch, so the sum gives every
        # environment the gradients it would have alone.
        sum(s.loss for s in scores).backward()
        # Before the guard, which only drops seed gradients: the hosts' step is the same.
        hosts.step(trainers[0].host_lr)
        return scores

    trained = train_chunks(trainers, chunks, forward_backward)
    hosts.store(trainers)
    return trained


def step_together(envs, edits: Sequence[Edit], cache: StackCache | None = None) -> list:
    """GrowthEnv.step for K environments at once: the edits, one batched training chunk,
    then each environment's evaluation, reward and observation. Pass the same `cache` at
    every decision to reuse the stacked hosts."""
    for env, edit in zip(envs, edits):
        env.apply(edit)
    start = time.perf_counter()
    trained = train_together(envs, [env.trainer.chunk(env.t) for env in envs], cache)
    seconds = (time.perf_counter() - start) / len(envs)
    return [env.finish(loss, acc, images, seconds, flops) for env, (loss, acc, images, flops) in zip(envs, trained)]
