"""Placement policy: which injection points get a slot, and the YAML slot spec.

A spec either lists slots exactly (what `esper instrument --out` writes):

    slots:
      - {id: early, at: layer1}
      - {id: late, at: layer4}

or filters the automatic choice:

    include: ["layer*"]        # globs over point ids and the modules that end there
    exclude: ["layer4"]
    names: {layer1: early}     # rename slots
    max_slots: 3
"""

from __future__ import annotations

import fnmatch
import math
from pathlib import Path
from typing import Any

import yaml

from esper.graph.analysis import InjectionPoint
from esper.leyline import TraceError


def default_slot_count(n_points: int) -> int:
    """Deeper hosts get more slots, sublinearly: ceil(sqrt(2n)) of n candidates, at least 3.

    n = 3 -> 3, 8 (resnet18) -> 4, 13 (vit_b_16) -> 6, 32 (mobilenet_v2) -> 8."""
    return min(n_points, max(3, math.ceil(math.sqrt(2 * n_points))))


def _spread(points: list[InjectionPoint], k: int) -> list[InjectionPoint]:
    """k points, evenly spread along the stream, filling from the coarsest blocks down:
    within each nesting depth, farthest-point sampling by stream position."""
    if k >= len(points):
        return list(points)
    chosen: list[InjectionPoint] = []
    for depth in sorted({p.depth for p in points}):
        tier = [p for p in points if p.depth == depth]
        while tier and len(chosen) < k:
            if chosen:
                best = max(tier, key=lambda p: min(abs(p.index - c.index) for c in chosen))
            else:
                best = tier[len(tier) // 2] if k == 1 else tier[-1]
            chosen.append(best)
            tier.remove(best)
    return sorted(chosen, key=lambda p: p.index)


def _matches(point: InjectionPoint, patterns: list[str]) -> bool:
    names = (point.id,) + point.modules
    return any(fnmatch.fnmatchcase(n, pat) for n in names for pat in patterns)


def load_spec(spec: str | Path | dict | None) -> dict[str, Any]:
    if spec is None:
        return {}
    if isinstance(spec, dict):
        return spec
    path = Path(spec)
    if not path.exists():
        raise FileNotFoundError(f"slot spec not found: {path}")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"slot spec {path} must be a mapping, got {type(data).__name__}")
    return data


def select_points(
    points: list[InjectionPoint], max_slots: int | None = None, spec: str | Path | dict | None = None
) -> list[InjectionPoint]:
    """Choose and name the points that get slots, input side first."""
    spec = load_spec(spec)
    if max_slots is None:
        max_slots = spec.get("max_slots")
    if "slots" in spec:
        chosen = []
        by_name = {}
        for p in points:
            for n in (p.id,) + p.modules:
                by_name.setdefault(n, p)
        for entry in spec["slots"]:
            at = entry["at"] if isinstance(entry, dict) else entry
            if at not in by_name:
                raise TraceError(
                    f"spec names slot position '{at}', which is not an injection point of this model",
                    hint="candidates: " + ", ".join(p.id for p in points),
                )
            p = by_name[at]
            new_id = entry.get("id", p.id) if isinstance(entry, dict) else p.id
            chosen.append(_renamed(p, new_id))
        chosen.sort(key=lambda p: p.index)
        return chosen[:max_slots] if max_slots else chosen
    pool = list(points)
    if spec.get("include"):
        pool = [p for p in pool if _matches(p, list(spec["include"]))]
    if spec.get("exclude"):
        pool = [p for p in pool if not _matches(p, list(spec["exclude"]))]
    k = len(pool) if spec.get("include") else default_slot_count(len(pool))
    if max_slots is not None:
        k = min(k, max_slots)
    chosen = _spread(pool, k)
    names = spec.get("names") or {}
    chosen = [_renamed(p, names.get(p.id, p.id)) for p in chosen]
    ids = [p.id for p in chosen]
    if len(set(ids)) != len(ids):
        raise ValueError(f"slot names must be unique, got {ids}")
    return chosen


def _renamed(p: InjectionPoint, new_id: str) -> InjectionPoint:
    if new_id == p.id:
        return p
    return InjectionPoint(new_id, p.node, p.module, p.modules, p.shape, p.depth, p.index)


def spec_for(points: list[InjectionPoint], original: list[InjectionPoint]) -> dict[str, Any]:
    """The resolved spec that reproduces exactly this placement."""
    at = {p.node: p.id for p in original}
    return {
        "slots": [{"id": p.id, "at": at[p.node], "shape": list(p.shape)} for p in points],
    }
