"""A checkpoint's manifest.yaml, read as untrusted input.

Every field is checked before anything uses it, and the model the edit log rebuilds is
checked against the fields that describe it; whatever does not fit raises
CheckpointError naming the field. Reading a manifest never runs code: YAML is read with
the safe loader, and the host factory it names is only reported, never called, here.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
import yaml

from esper.graph.placement import check_spec
from esper.kasmina.model import MorphogeneticModel
from esper.leyline import CheckpointError, Edit, EditError, SeedStage, SpecError

FORMAT = "esper-checkpoint/1"
MANIFEST, TENSORS = "manifest.yaml", "tensors.safetensors"
_FIELDS = ("format", "host", "trace", "example_inputs", "spec", "step_count", "edits", "slots", "tensors")
_SHA256 = re.compile(r"[0-9a-f]{64}")


class _Fields:
    """Checks on the fields of one manifest; a failed check names the field."""

    def __init__(self, where: Path):
        self.where = where

    def need(self, ok: bool, field: str, what: str) -> None:
        if not ok:
            raise CheckpointError(f"{self.where}: field '{field}' {what}")

    def mapping(self, value, field: str, keys: tuple[str, ...], optional: tuple[str, ...] = ()) -> dict:
        self.need(isinstance(value, dict), field, f"must be a mapping, not {_show(value)}")
        prefix = f"{field}." if field else ""
        for key in keys:
            self.need(key in value, prefix + key, "is missing")
        for key in value:
            self.need(key in keys or key in optional, f"{prefix}{key}", f"is not a field of {FORMAT}")
        return value

    def whole(self, value, field: str, low: int) -> None:
        # bool is an int to Python; `true` as a count is a corruption, not a number
        self.need(type(value) is int and value >= low, field, f"must be an integer >= {low}, not {_show(value)}")

    def text(self, value, field: str, optional: bool = False) -> None:
        ok = isinstance(value, str) or (optional and value is None)
        self.need(ok, field, f"must be a string{' or null' if optional else ''}, not {_show(value)}")


def _show(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def read_manifest(path: str | Path) -> dict:
    """The manifest of the checkpoint directory `path`, every field checked."""
    where = Path(path) / MANIFEST
    if not where.is_file():
        raise CheckpointError(f"{path} is not an esper checkpoint: no {MANIFEST}")
    try:
        manifest = yaml.safe_load(where.read_text())
    except Exception as e:  # PyYAML raises ValueError, KeyError... too, on bad tagged scalars
        raise CheckpointError(f"{where} is not plain YAML: {' '.join(str(e).split())}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else manifest
        raise CheckpointError(f"{where}: unknown format {_show(found)}, expected {FORMAT}")
    f = _Fields(where)
    f.mapping(manifest, "", _FIELDS)
    host = f.mapping(manifest["host"], "host", ("class", "factory"))
    f.text(host["class"], "host.class")
    f.text(host["factory"], "host.factory", optional=True)
    if manifest["trace"] == "export":  # what checkpoints called the hook path before it was named so
        manifest["trace"] = "hooks"
    f.need(manifest["trace"] in ("fx", "hooks"), "trace", f"must be fx or hooks, not {_show(manifest['trace'])}")
    _check_examples(f, manifest["example_inputs"])
    try:
        check_spec(manifest["spec"], "a slot spec")
    except SpecError as e:
        f.need(False, "spec", f"is not {e}")
    f.whole(manifest["step_count"], "step_count", 0)
    f.need(isinstance(manifest["edits"], list), "edits", f"must be a list, not {_show(manifest['edits'])}")
    for i, d in enumerate(manifest["edits"]):
        try:
            Edit.from_dict(d)
        except EditError as e:
            f.need(False, f"edits[{i}]", f"is not an edit: {e}")
    _check_slots(f, manifest["slots"])
    tensors = f.mapping(manifest["tensors"], "tensors", ("file", "sha256", "count", "aliases"))
    name = tensors["file"]
    f.need(
        isinstance(name, str) and Path(name).name == name and name not in ("", ".", ".."),
        "tensors.file",
        f"must name a file in the checkpoint directory, not {_show(name)}",
    )
    f.need(
        isinstance(tensors["sha256"], str) and bool(_SHA256.fullmatch(tensors["sha256"])),
        "tensors.sha256",
        f"must be 64 lowercase hex digits, not {_show(tensors['sha256'])}",
    )
    f.whole(tensors["count"], "tensors.count", 0)
    aliases = tensors["aliases"]
    f.need(isinstance(aliases, dict), "tensors.aliases", f"must be a mapping, not {_show(aliases)}")
    for alias, source in aliases.items():
        f.need(isinstance(alias, str) and isinstance(source, str), f"tensors.aliases.{alias}", "must map a tensor name to another")
    return manifest


def _check_examples(f: _Fields, examples) -> None:
    f.need(isinstance(examples, list) and bool(examples), "example_inputs", f"must be a non-empty list, not {_show(examples)}")
    for i, meta in enumerate(examples):
        field = f"example_inputs[{i}]"
        meta = f.mapping(meta, field, ("shape", "dtype"))
        shape = meta["shape"]
        f.need(
            isinstance(shape, list) and all(type(v) is int and v >= 1 for v in shape),
            f"{field}.shape",
            f"must be a list of sizes >= 1, not {_show(shape)}",
        )
        dtype = meta["dtype"]
        f.need(
            isinstance(dtype, str) and isinstance(getattr(torch, dtype, None), torch.dtype),
            f"{field}.dtype",
            f"must name a torch dtype (float32, int64, ...), not {_show(dtype)}",
        )


def _check_slots(f: _Fields, slots) -> None:
    f.need(isinstance(slots, dict), "slots", f"must be a mapping, not {_show(slots)}")
    for slot_id, state in slots.items():
        field = f"slots.{slot_id}"
        f.need(isinstance(slot_id, str), field, "must be named by a string")
        state = f.mapping(state, field, ("stage", "blueprint", "blend", "events"), optional=("steps", "base", "generation"))
        f.need(
            isinstance(state["stage"], str) and state["stage"] in SeedStage.__members__,
            f"{field}.stage",
            f"must be a seed stage, not {_show(state['stage'])}",
        )
        f.text(state["blueprint"], f"{field}.blueprint", optional=True)
        f.text(state["blend"], f"{field}.blend", optional=True)
        events = state["events"]
        f.need(
            isinstance(events, list) and all(isinstance(e, str) for e in events),
            f"{field}.events",
            f"must be a list of strings, not {_show(events)}",
        )
        if state.get("steps") is not None:
            f.whole(state["steps"], f"{field}.steps", 1)
        if "base" in state:
            f.text(state["base"], f"{field}.base")
        if "generation" in state:
            f.whole(state["generation"], f"{field}.generation", 0)


def example_inputs(manifest: dict, where: Path) -> tuple[torch.Tensor, ...]:
    """Tensors of the manifest's example shapes and dtypes, to trace the host with."""
    made = []
    for i, meta in enumerate(manifest["example_inputs"]):
        dtype = getattr(torch, meta["dtype"])
        try:
            made.append(torch.randn(meta["shape"], dtype=dtype) if dtype.is_floating_point else torch.zeros(meta["shape"], dtype=dtype))
        except (RuntimeError, MemoryError) as e:
            raise CheckpointError(
                f"{where}: field 'example_inputs[{i}]' cannot be made: {type(e).__name__}: {str(e).splitlines()[0]}"
            ) from None
    return tuple(made)


def check_model(manifest: dict, mm: MorphogeneticModel, where: Path) -> None:
    """The model the edit log rebuilt must be the one the manifest describes."""
    f = _Fields(where)
    f.need(mm.kind == manifest["trace"], "trace", f"is {manifest['trace']}, but the host traces with {mm.kind}")
    for i, entry in enumerate(manifest["spec"].get("slots") or []):
        if not isinstance(entry, dict) or "shape" not in entry or entry.get("id", entry["at"]) not in mm.plane.slots:
            continue
        shape = list(mm.plane.slot(entry.get("id", entry["at"])).shape)
        f.need(
            shape == entry["shape"],
            f"spec.slots[{i}].shape",
            f"is {entry['shape']}, but the host traced with field 'example_inputs' gives {shape}: one of them was changed",
        )
    slots = manifest["slots"]
    f.need(set(slots) == set(mm.plane.slots), "slots", f"lists {sorted(slots)}, but the edit log leaves the slots {list(mm.plane.slots)}")
    for slot_id, slot in mm.plane.slots.items():
        actual = {
            "stage": slot.stage.name,
            "blueprint": slot.blueprint,
            "blend": slot.blend_name,
            "steps": slot.blend.steps if slot.blend is not None else None,
            **lineage(mm, slot_id),
        }
        for key, value in actual.items():
            # Checkpoints from before `steps` and the lineage were recorded lack them: the replay derives them.
            saved = slots[slot_id].get(key, value)
            f.need(saved == value, f"slots.{slot_id}.{key}", f"is {_show(saved)}, but the edit log gives {_show(value)}")


def lineage(mm: MorphogeneticModel, slot_id: str) -> dict:
    """The injection point a slot descends from and how many fossils came before it there."""
    point = mm.points[slot_id]
    return {"base": point.base, "generation": point.generation}


def check_tensors(manifest: dict, tensors: dict[str, torch.Tensor], mm: MorphogeneticModel, where: Path) -> dict:
    """The stored tensors with their aliases filled in, once they fit `mm` name for name and shape for shape."""
    f = _Fields(where)
    meta = manifest["tensors"]
    f.need(len(tensors) == meta["count"], "tensors.count", f"is {meta['count']}, but {meta['file']} holds {len(tensors)} tensors")
    for alias, source in meta["aliases"].items():
        f.need(
            source in tensors and alias not in tensors,
            f"tensors.aliases.{alias}",
            f"must name a stored tensor ({_show(source)}) for a name not stored itself",
        )
        tensors[alias] = tensors[source]
    expected = mm.state_dict()
    missing, unexpected = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
    f.need(
        not missing and not unexpected,
        "edits",
        f"rebuild a model the tensors do not fit: missing {missing[:5]}, unexpected {unexpected[:5]}",
    )
    for name, t in expected.items():
        f.need(
            tensors[name].shape == t.shape,
            "edits",
            f"rebuild '{name}' with shape {tuple(t.shape)}, but the stored tensor has {tuple(tensors[name].shape)}",
        )
    return tensors
