"""Replay: rebuild a grown model from a fresh host and its edit log."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from esper.kasmina.instrument import instrument
from esper.kasmina.model import MorphogeneticModel
from esper.leyline import Edit, Op, edits_from_yaml


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
    plane = mm.plane
    for edit in edits:
        if edit.step is not None:
            if edit.step < plane.step_count:
                raise ValueError(f"edit log out of order: {edit} comes after step {plane.step_count}")
            while plane.step_count < edit.step:
                plane.step()
        if edit.op is Op.WAIT:
            plane.apply(edit)
        else:
            plane.apply(Edit(edit.op, edit.slot, edit.blueprint, edit.blend, edit.steps))
    while until_step is not None and plane.step_count < until_step:
        plane.step()
    return mm
