"""Dataflow analysis: where must the main activation stream pass, and which of those
points are block boundaries?

A point is an injection point when
  1. it dominates the output in the stream graph (every path from the input to the
     output runs through it: a cut point),
  2. it carries one floating tensor of rank >= 3 whose first dimension is the batch, and
  3. it is the last node of a block (a module that owns two or more graph nodes), or, in
     a flat host with fewer than three such blocks, the output of any module.

The stream graph keeps only edges that carry floating tensors or tensors of the input's
own dtype (token ids and their views), so sizes, `arange(T)` position ids and boolean masks that reach every
block do not hide the cut points of a residual stream.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass

import networkx as nx
import torch.fx as fx


@dataclass(frozen=True)
class InjectionPoint:
    id: str  # readable slot id: the outermost block that ends here
    node: str  # the graph node whose value the slot sees
    module: str  # the innermost block that ends here (hook target in eager mode)
    modules: tuple[str, ...]  # every block that ends here, outermost first
    shape: tuple[int, ...]  # activation shape, batch first
    depth: int  # nesting depth of `id` (1 = a child of the root)
    index: int  # position along the stream, 0 nearest the input
    # Lineage: a fossil folded in at a point opens a slot after it (`base+1`, then `base+2`...).
    base: str = ""  # the injection point the slot descends from; its own id (the default) for an original point
    generation: int = 0  # fossils folded in at `base` before this slot opened

    def __post_init__(self):
        if not self.base:
            object.__setattr__(self, "base", self.id)


def _stack(node: fx.Node) -> list[str]:
    stack = node.meta.get("nn_module_stack") or {}
    return [v[0] for v in stack.values() if v[0]]


# Ops that read only a tensor's shape, dtype or device, never its values: what they
# build (masks, position ids) is a side input, not part of the stream.
_VALUE_FREE = {
    "size",
    "dim",
    "shape",
    "dtype",
    "device",
    "new_ones",
    "new_zeros",
    "new_empty",
    "new_full",
    "zeros_like",
    "ones_like",
    "empty_like",
    "full_like",
    "rand_like",
    "randn_like",
    "sym_size",
}


def _value_free(node: fx.Node) -> bool:
    if node.op == "call_method":
        return node.target in _VALUE_FREE
    if node.op == "call_function":
        name = getattr(node.target, "__name__", str(node.target)).split(".")[0]
        if name == "getattr" and len(node.args) > 1:
            return node.args[1] in _VALUE_FREE
        return name in _VALUE_FREE
    return False


def stream_graph(graph: fx.Graph, input_node: str) -> nx.DiGraph:
    """The nodes reachable from the input along floating-tensor edges, as a DiGraph."""
    g = nx.DiGraph()
    by_name = {n.name: n for n in graph.nodes}
    start = by_name[input_node]
    start_dtype = start.meta["esper_value"].dtype if "esper_value" in start.meta else None
    g.add_node(start.name)
    todo = [start]
    while todo:
        n = todo.pop()
        value = n.meta.get("esper_value")
        carries = n is start or (value is not None and (value.floating or value.dtype == start_dtype))
        if not carries:
            continue
        for user in n.users:
            if _value_free(user):
                continue
            if user.name not in g:
                todo.append(user)
            g.add_edge(n.name, user.name)
    return g


def cut_points(graph: fx.Graph, input_node: str) -> list[str]:
    """Nodes every input-to-output path passes through, input side first."""
    g = stream_graph(graph, input_node)
    out = next(n.name for n in graph.nodes if n.op == "output")
    if out not in g:
        return []
    idom = nx.immediate_dominators(g, input_node)
    chain = []
    n = idom[out]
    while n != input_node:
        chain.append(n)
        n = idom[n]
    return chain[::-1]


def find_injection_points(graph: fx.Graph, input_node: str, batch: int) -> list[InjectionPoint]:
    """Every candidate injection point of the graph, in stream order."""
    nodes = list(graph.nodes)
    owned = Counter()
    last_node: dict[str, str] = {}
    for n in nodes:
        for path in _stack(n):
            # a call of a plain leaf module is one op, not a block; an opaque leaf kept
            # whole by the fx retry is a block
            if n.op != "call_module" or n.target != path:
                owned[path] += 1
            elif n.meta.get("esper_opaque"):
                owned[path] += 2
            last_node[path] = n.name
    blocks_ending = defaultdict(list)
    for path, name in last_node.items():
        if owned[path] >= 2:
            blocks_ending[name].append(path)
    cuts = cut_points(graph, input_node)
    points = _points(graph, cuts, blocks_ending, batch)
    if len(points) < 3:
        # a flat host (a Sequential of plain layers): its layers' outputs are the boundaries
        for n in nodes:
            if n.op == "call_module" and n.target not in blocks_ending[n.name]:
                blocks_ending[n.name].append(n.target)
        points = _points(graph, cuts, blocks_ending, batch)
    return points


def _points(graph: fx.Graph, cuts: list[str], ending: dict[str, list[str]], batch: int) -> list[InjectionPoint]:
    by_name = {n.name: n for n in graph.nodes}
    points = []
    used = Counter()
    for name in cuts:
        value = by_name[name].meta.get("esper_value")
        if value is None or value.shape is None or not value.floating:
            continue
        if len(value.shape) < 3 or value.shape[0] != batch:
            continue
        blocks = sorted(ending.get(name, []), key=lambda p: p.count("."))
        if not blocks:
            continue
        ident = blocks[0]
        used[ident] += 1
        if used[ident] > 1:  # a block called more than once ends more than once
            ident = f"{ident}:{used[ident] - 1}"
        points.append(
            InjectionPoint(
                id=ident,
                node=name,
                module=blocks[-1],
                modules=tuple(blocks),
                shape=tuple(value.shape),
                depth=blocks[0].count(".") + 1,
                index=len(points),
            )
        )
    return points
