"""The seed lifecycle: stages and the one table of legal moves between them.

    DORMANT -> GERMINATED -> TRAINING -> BLENDING -> FOSSILIZED   (final)
                   \\            \\           \\
                    +------------+-----------+--> CULLED -> DORMANT (after a cooldown)
"""

from __future__ import annotations

from enum import IntEnum

from esper.leyline.edits import Op
from esper.leyline.errors import LifecycleError


class SeedStage(IntEnum):
    DORMANT = 0
    GERMINATED = 1
    TRAINING = 2
    BLENDING = 3
    FOSSILIZED = 4
    CULLED = 5


S = SeedStage

# The only place that says which stage may follow which.
TRANSITIONS: dict[SeedStage, frozenset[SeedStage]] = {
    S.DORMANT: frozenset({S.GERMINATED}),
    S.GERMINATED: frozenset({S.TRAINING, S.CULLED}),
    S.TRAINING: frozenset({S.BLENDING, S.CULLED}),
    S.BLENDING: frozenset({S.FOSSILIZED, S.CULLED}),
    S.FOSSILIZED: frozenset(),
    S.CULLED: frozenset({S.DORMANT}),
}

# Stages in which a seed module exists and may be advanced or culled.
ACTIVE_STAGES = frozenset({S.GERMINATED, S.TRAINING, S.BLENDING})

_ADVANCE = {S.GERMINATED: S.TRAINING, S.TRAINING: S.BLENDING, S.BLENDING: S.FOSSILIZED}


def check_move(slot: str, src: SeedStage, dst: SeedStage) -> None:
    """Raise LifecycleError unless src -> dst is in TRANSITIONS."""
    if dst not in TRANSITIONS[src]:
        allowed = ", ".join(s.name for s in sorted(TRANSITIONS[src])) or "nothing (final)"
        raise LifecycleError(slot, src, f"move to {dst.name}", f"allowed from here: {allowed}")


def target_stage(slot: str, stage: SeedStage, op: Op) -> SeedStage | None:
    """The stage an operation leads to from `stage`; None for WAIT. Raises on an illegal op."""
    if op is Op.WAIT:
        return None
    if op is Op.GERMINATE:
        dst = S.GERMINATED
    elif op is Op.ADVANCE:
        dst = _ADVANCE.get(stage)
    elif op is Op.CULL:
        dst = S.CULLED
    elif op is Op.FOSSILIZE:
        dst = S.FOSSILIZED
    else:  # pragma: no cover - Op is closed
        raise ValueError(op)
    if dst is None or dst not in TRANSITIONS[stage]:
        raise LifecycleError(slot, stage, op.name, _why(stage))
    return dst


def legal_ops(stage: SeedStage) -> list[Op]:
    """Every operation that is legal from `stage` (WAIT always is). Used for action masks."""
    ops = [Op.WAIT]
    for op in (Op.GERMINATE, Op.ADVANCE, Op.CULL, Op.FOSSILIZE):
        try:
            target_stage("", stage, op)
        except LifecycleError:
            continue
        ops.append(op)
    return ops


def _why(stage: SeedStage) -> str:
    if stage is S.FOSSILIZED:
        return "a fossilized seed is final"
    if stage is S.CULLED:
        return "the slot is cooling down after a cull"
    if stage is S.DORMANT:
        return "the slot holds no seed"
    allowed = ", ".join(s.name for s in sorted(TRANSITIONS[stage]))
    return f"allowed from here: {allowed}"
