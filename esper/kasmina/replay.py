"""Replay: rebuild a grown model from a fresh host and its edit log."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from esper.kasmina.instrument import instrument
from esper.kasmina.model import MorphogeneticModel
from esper.leyline import Edit, EditError, EsperError, Op, edits_from_yaml


def replay(
    host: nn.Module,
    example_inputs,
    edits: list[Edit] | str | Path,
    spec: dict | str | Path | None = None,
    max_slots: int | None = None,
    until_step: int | None = None,
) -> MorphogeneticModel:
    """Instrument `host` and apply `edits` in order, ticking the plane so each edit lands
    at the step it was logged at. The result has the same slots, stages, schedules,
    parameter names and shapes as the model that logged the edits (fresh seed weights:
    load a checkpoint for those). `spec` should be the original model's `mm.spec`."""
    if isinstance(edits, (str, Path)):
        edits = edits_from_yaml(Path(edits).read_text())
    mm = instrument(host, example_inputs, max_slots=max_slots, spec=spec)
    apply_edits(mm, edits, until_step)
    return mm


def apply_edits(mm: MorphogeneticModel, edits: list[Edit], until_step: int | None = None) -> None:
    """Apply a logged edit log to `mm`'s plane; an edit that does not fit raises EditError
    with its index."""
    plane = mm.plane
    for i, edit in enumerate(edits):
        try:
            if edit.tick is not None:
                if edit.tick < plane.ticks:
                    raise EditError(f"the log is out of order: this edit comes after tick {plane.ticks}")
                plane.step(edit.tick - plane.ticks)
            if edit.op is Op.WAIT:
                plane.apply(edit)
            else:
                plane.apply(Edit(edit.op, edit.slot, edit.blueprint, edit.blend, edit.steps, allow_noncausal=edit.allow_noncausal))
        except (EsperError, KeyError, ValueError) as e:
            # KeyError's str() quotes its message; args[0] is the text itself
            reason = e.args[0] if isinstance(e, KeyError) and e.args else e
            raise EditError(f"edit {i} {edit.to_dict()} does not replay: {reason}", index=i) from e
    if until_step is not None:
        if until_step < plane.ticks:
            raise EditError(f"the log runs to step {plane.ticks}, past its end at step {until_step}")
        plane.step(until_step - plane.ticks)


def fossilize_from_start(plane, fossils: dict[str, str]) -> None:
    """Grow `fossils` (slot -> blueprint) to the end of their lifecycle before any
    training: a static bigger model. A slot that opens after a fossil (`layer3+1`) is
    grown once that fossil is in place, one generation per tick. The edits go through the
    plane like any other, so the edit log replays."""
    remaining = dict(fossils)
    while remaining:
        ready = [slot for slot in remaining if slot in plane.slots]
        if not ready:
            raise ValueError(f"fossils name unknown slots {sorted(remaining)}; this host has {list(plane.slots)}")
        for slot in ready:
            plane.apply(Edit(Op.GERMINATE, slot, blueprint=remaining[slot], blend="linear", steps=1))
            plane.apply(Edit(Op.ADVANCE, slot))
            plane.apply(Edit(Op.ADVANCE, slot))
        plane.step()
        for slot in ready:
            plane.apply(Edit(Op.FOSSILIZE, slot))
            del remaining[slot]
