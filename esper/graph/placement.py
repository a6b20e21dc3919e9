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

Either form may say `causal: true` or `false`: whether the host is causal along its
sequence axis, taken as given instead of probed (the resolved spec records the answer).
"""

from __future__ import annotations

import fnmatch
import math
from pathlib import Path
from typing import Any

import yaml

from esper.graph.analysis import InjectionPoint
from esper.leyline import SpecError, TraceError


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
    """A spec from a dict or a YAML file, checked: every error is a one-line SpecError."""
    if spec is None:
        return {}
    if isinstance(spec, dict):
        return check_spec(spec)
    path = Path(spec)
    if not path.is_file():
        raise FileNotFoundError(f"slot spec not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except Exception as e:  # PyYAML raises ValueError, KeyError... too, on bad tagged scalars
        raise SpecError(f"slot spec {path} is not plain YAML: {' '.join(str(e).split())}") from None
    return check_spec(data, str(path))


def check_spec(spec, where: str = "slot spec") -> dict[str, Any]:
    """`spec` itself if it is a well-formed slot spec (see the module docstring)."""
    if not isinstance(spec, dict):
        raise SpecError(f"{where} must be a mapping, not {type(spec).__name__}")
    unknown = sorted(str(k) for k in spec if k not in ("slots", "include", "exclude", "names", "max_slots", "causal"))
    if unknown:
        raise SpecError(f"{where}: unknown keys {unknown}; a spec has slots, or include/exclude/names/max_slots, and causal")
    if spec.get("causal") not in (None, True, False):
        raise SpecError(f"{where}: 'causal' must be true or false, not {spec['causal']!r}")
    for key in ("include", "exclude"):
        if not _strings(spec.get(key) or []):
            raise SpecError(f"{where}: '{key}' must be a list of globs, not {spec[key]!r}")
    names = spec.get("names") or {}
    if not (isinstance(names, dict) and _strings([*names, *names.values()]) and all(names.values())):
        raise SpecError(f"{where}: 'names' must map point ids to slot names, not {names!r}")
    check_max_slots(spec.get("max_slots"), f"{where}: 'max_slots'")
    slots = spec.get("slots") or []
    if not isinstance(slots, list):
        raise SpecError(f"{where}: 'slots' must be a list, not {slots!r}")
    for i, entry in enumerate(slots):
        if not _slot_entry_ok(entry):
            raise SpecError(f"{where}: slots[{i}] must be a point id or {{id: NAME, at: POINT, shape: [...]}}, not {entry!r}")
    return spec


def _slot_entry_ok(entry) -> bool:
    if isinstance(entry, str):
        return bool(entry)
    if not (isinstance(entry, dict) and set(entry) <= {"id", "at", "shape"}):
        return False
    name = entry.get("id", entry.get("at"))
    return _strings([entry.get("at"), name]) and bool(name) and _ints(entry.get("shape", []))


def _strings(values) -> bool:
    return isinstance(values, list) and all(isinstance(v, str) for v in values)


def _ints(values) -> bool:
    return isinstance(values, list) and all(type(v) is int for v in values)


def check_max_slots(max_slots, what: str = "max_slots") -> None:
    if max_slots is not None and (type(max_slots) is not int or max_slots < 1):
        raise SpecError(f"{what} must be a whole number >= 1, not {max_slots!r}")


def select_points(
    points: list[InjectionPoint], max_slots: int | None = None, spec: str | Path | dict | None = None
) -> list[InjectionPoint]:
    """Choose and name the points that get slots, input side first."""
    spec = load_spec(spec)
    check_max_slots(max_slots)
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
        return _named(chosen[:max_slots] if max_slots else chosen, points)
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
    return _named([_renamed(p, names.get(p.id, p.id)) for p in chosen], points)


def _named(chosen: list[InjectionPoint], points: list[InjectionPoint]) -> list[InjectionPoint]:
    """The chosen points, refused when there are none or their names clash."""
    if not chosen:
        raise SpecError(f"the slot spec selects none of the {len(points)} injection points: {', '.join(p.id for p in points)}")
    ids = [p.id for p in chosen]
    if len(set(ids)) != len(ids):
        raise SpecError(f"slot names must be unique, got {ids}")
    return chosen


def _renamed(p: InjectionPoint, new_id: str) -> InjectionPoint:
    if new_id == p.id:
        return p
    return InjectionPoint(new_id, p.node, p.module, p.modules, p.shape, p.depth, p.index)


def spec_for(points: list[InjectionPoint], original: list[InjectionPoint], causal: bool = False) -> dict[str, Any]:
    """The resolved spec that reproduces exactly this placement and causality."""
    at = {p.node: p.id for p in original}
    return {
        "slots": [{"id": p.id, "at": at[p.node], "shape": list(p.shape)} for p in points],
        "causal": causal,
    }
