"""Rewrite passes over fx graphs: each a small function from graph to graph."""

from __future__ import annotations

import re

import torch.fx as fx

from esper.graph.analysis import InjectionPoint


def _route_through(graph: fx.Graph, node: fx.Node, slot_id: str, target: str) -> fx.Node:
    name = "slot_" + re.sub(r"\W", "_", slot_id)
    with graph.inserting_after(node):
        slot = graph.create_node("call_module", target, (node,), name=name)
    slot.meta["esper_slot"] = slot_id
    node.replace_all_uses_with(slot, delete_user_cb=lambda user: user is not slot)
    return slot


def insert_slot_calls(graph: fx.Graph, points: list[InjectionPoint], target_of) -> fx.Graph:
    """Route each point's value through a slot module; `target_of(point)` names the module.

    ```text
    Before:                                  After:
        %layer1 = call_module[layer1](x)         %layer1 = call_module[layer1](x)
        %layer2 = call_module[layer2](%layer1)   %slot_layer1 = call_module[plane.layer1](%layer1)
                                                 %layer2 = call_module[layer2](%slot_layer1)
    ```
    """
    by_name = {n.name: n for n in graph.nodes}
    for p in points:
        _route_through(graph, by_name[p.node], p.id, target_of(p))
    return graph


def fold_slot(graph: fx.Graph, slot_id: str, fossil_target: str) -> fx.Node:
    """Replace a slot call by a call of its fossil: the slot and its blend leave the graph.

    ```text
    Before:                                          After:
        %slot_layer1 = call_module[plane.layer1](%a)     %fossil_layer1 = call_module[plane.layer1.seed](%a)
    ```
    """
    node = slot_nodes(graph)[slot_id]
    with graph.inserting_after(node):
        fossil = graph.create_node("call_module", fossil_target, node.args, name="fossil_" + re.sub(r"\W", "_", slot_id))
    node.replace_all_uses_with(fossil)
    graph.erase_node(node)
    return fossil


def open_slot_after(graph: fx.Graph, node: fx.Node, slot_id: str, target: str) -> fx.Graph:
    """Open a new dormant slot on the output of `node` (a fossil, so the region can keep growing).

    ```text
    Before:                                After:
        %f = call_module[plane.l1.seed](%a)    %f = call_module[plane.l1.seed](%a)
        %b = call_module[layer2](%f)           %slot_l1_1 = call_module[plane.l1_1](%f)
                                               %b = call_module[layer2](%slot_l1_1)
    ```
    """
    _route_through(graph, node, slot_id, target)
    return graph


def strip_dormant(graph: fx.Graph, keep) -> fx.Graph:
    """Remove every slot call for which `keep(slot_id)` is false; its input flows straight on.

    ```text
    Before:                                      After:
        %slot_l1 = call_module[plane.l1](%a)         %b = call_module[layer2](%a)
        %b = call_module[layer2](%slot_l1)
    ```
    """
    for slot_id, node in slot_nodes(graph).items():
        if not keep(slot_id):
            node.replace_all_uses_with(node.args[0])
            graph.erase_node(node)
    return graph


def slot_nodes(graph: fx.Graph) -> dict[str, fx.Node]:
    """The slot call of every slot id in the graph."""
    return {n.meta["esper_slot"]: n for n in graph.nodes if "esper_slot" in n.meta}
