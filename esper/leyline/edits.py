"""Edits: the one action type for every lifecycle decision, by hand or by Tamiyo."""

from __future__ import annotations

import operator
from dataclasses import asdict, dataclass, fields
from enum import IntEnum

from esper.leyline.errors import EditError


class Op(IntEnum):
    WAIT = 0
    GERMINATE = 1
    ADVANCE = 2
    CULL = 3
    FOSSILIZE = 4


@dataclass(frozen=True)
class Edit:
    """One decision: do `op` to `slot`. blueprint and blend only count for GERMINATE.

    `steps` is the blend schedule's length in plane ticks, `tick` the plane tick the
    edit was applied at (filled in by the plane when it logs the edit).
    `allow_noncausal` lets GERMINATE grow a blueprint or blend that is not causal-safe on
    a causal host, which the plane otherwise refuses; it is logged, so replay agrees.
    """

    op: Op
    slot: str | None = None
    blueprint: str | None = None
    blend: str | None = None
    steps: int | None = None
    tick: int | None = None
    allow_noncausal: bool = False

    def __post_init__(self):
        object.__setattr__(self, "op", _op(self.op))
        for name in ("slot", "blueprint", "blend"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise EditError(f"{name} must be a string, not {type(value).__name__} {value!r}")
        if self.op is not Op.WAIT and not self.slot:
            raise EditError(f"{self.op.name} needs a slot")
        if self.op is Op.GERMINATE and not self.blueprint:
            raise EditError("GERMINATE needs a blueprint")
        object.__setattr__(self, "steps", _whole(self.steps, 1, "steps (the blend schedule's length in ticks)"))
        object.__setattr__(self, "tick", _whole(self.tick, 0, "tick (the plane tick the edit was applied at)"))
        if not isinstance(self.allow_noncausal, bool):
            raise EditError(f"allow_noncausal must be true or false, not {self.allow_noncausal!r}")

    def to_dict(self) -> dict:
        d = {k: v for k, v in asdict(self).items() if v is not None and v is not False}
        d["op"] = self.op.name
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Edit":
        if not isinstance(d, dict):
            raise EditError(f"an edit must be a mapping, not {type(d).__name__}")
        if "step" in d and "tick" not in d:  # what logs called the tick before it was named so
            d = {("tick" if k == "step" else k): v for k, v in d.items()}
        unknown = [str(k) for k in d if k not in _FIELDS]
        if unknown or "op" not in d:
            raise EditError(f"an edit has the keys {', '.join(_FIELDS)} (op required), not {', '.join(map(str, d))}")
        return cls(**d)


_FIELDS = [f.name for f in fields(Edit)]


def _op(op) -> Op:
    """Op members, their names in any case, and their numbers are all accepted."""
    if isinstance(op, Op):
        return op
    if isinstance(op, str) and op.upper() in Op.__members__:
        return Op[op.upper()]
    if _whole_or_none(op) in set(Op):
        return Op(int(op))
    raise EditError(f"unknown op {op!r}: use one of {', '.join(Op.__members__)} (esper.Op or its name)")


def edits_to_yaml(edits: list[Edit]) -> str:
    """The edit log as YAML, one mapping per edit, in order."""
    import yaml

    return yaml.safe_dump([e.to_dict() for e in edits], sort_keys=False)


def edits_from_yaml(text: str) -> list[Edit]:
    import yaml

    return [Edit.from_dict(d) for d in (yaml.safe_load(text) or [])]


def _whole_or_none(value) -> int | None:
    # bool is an int to Python, but True as a tick count is a slip, not a number
    if isinstance(value, bool):
        return None
    try:
        return operator.index(value)
    except TypeError:
        return None


def _whole(value, low: int, what: str) -> int | None:
    if value is None:
        return None
    n = _whole_or_none(value)
    if n is None or n < low:
        raise EditError(f"{what} must be an integer >= {low}, not {value!r}")
    return n
