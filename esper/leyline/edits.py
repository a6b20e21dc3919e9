"""Edits: the one action type for every lifecycle decision, by hand or by Tamiyo."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from enum import IntEnum


class Op(IntEnum):
    WAIT = 0
    GERMINATE = 1
    ADVANCE = 2
    CULL = 3
    FOSSILIZE = 4


@dataclass(frozen=True)
class Edit:
    """One decision: do `op` to `slot`. blueprint and blend only count for GERMINATE.

    `steps` is the blend schedule length in plane ticks, `step` the training step the
    edit was applied at (filled in by the plane when it logs the edit).
    """

    op: Op
    slot: str | None = None
    blueprint: str | None = None
    blend: str | None = None
    steps: int | None = None
    step: int | None = None

    def __post_init__(self):
        object.__setattr__(self, "op", Op[self.op] if isinstance(self.op, str) else Op(self.op))
        if self.op is not Op.WAIT and not self.slot:
            raise ValueError(f"{self.op.name} needs a slot")
        if self.op is Op.GERMINATE and not self.blueprint:
            raise ValueError("GERMINATE needs a blueprint")

    def to_dict(self) -> dict:
        d = {k: v for k, v in asdict(self).items() if v is not None}
        d["op"] = self.op.name
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Edit":
        return cls(**d)


def edits_to_yaml(edits: list[Edit]) -> str:
    """The edit log as YAML, one mapping per edit, in order."""
    import yaml

    return yaml.safe_dump([e.to_dict() for e in edits], sort_keys=False)


def edits_from_yaml(text: str) -> list[Edit]:
    import yaml

    return [Edit.from_dict(d) for d in (yaml.safe_load(text) or [])]
