"""Checkpoints of instrumented models: safetensors for tensors, a YAML manifest for the rest.

    CHECKPOINT/
      manifest.yaml         format, host factory, example input shapes, slot spec, edit log,
                            tick count, slot states, events and lineage, tensor names and the tensors' sha256
      tensors.safetensors   host and seed weights, buffers, blend schedules

Loading replays the edit log on a fresh host (so every seed module exists again) and
then loads the tensors. Nothing is unpickled, and no code the checkpoint names runs
unless the caller trusts it: the host comes from `host=`, or from the manifest's factory
with `trust_host_code=True`.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import yaml
from safetensors import SafetensorError
from safetensors.torch import load as load_tensors
from safetensors.torch import save_file
from torch import nn

from esper.kasmina.hosts import build_host, host_factory_of
from esper.kasmina.instrument import instrument
from esper.kasmina.manifest import FORMAT, MANIFEST, TENSORS, check_model, check_tensors, lineage, read_manifest
from esper.kasmina.manifest import example_inputs as manifest_examples
from esper.kasmina.model import MorphogeneticModel
from esper.kasmina.replay import apply_edits
from esper.leyline import CheckpointError, Edit, EditError

__all__ = ["load", "read_manifest", "save"]


def save(mm: MorphogeneticModel, path: str | Path, example_inputs=None) -> Path:
    """Write `mm` to the directory `path` (created or replaced)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tensors, aliases, seen = {}, {}, {}
    for name, t in mm.state_dict().items():
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride()))
        if t.numel() and key in seen:  # tied weights: safetensors stores each storage once
            aliases[name] = seen[key]
            continue
        seen[key] = name
        tensors[name] = t.detach().cpu().contiguous()
    tmp = path / (TENSORS + ".tmp")
    save_file(tensors, str(tmp))
    digest = hashlib.sha256(tmp.read_bytes()).hexdigest()
    examples = example_inputs if example_inputs is not None else mm.example_inputs
    manifest = {
        "format": FORMAT,
        "host": {"class": f"{type(mm.host).__module__}:{type(mm.host).__qualname__}", "factory": host_factory_of(mm.host, mm.host_factory)},
        "trace": mm.kind,
        "example_inputs": [{"shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch.")} for t in examples],
        "spec": mm.spec,
        "step_count": mm.plane.ticks,  # the key every saved manifest carries
        "edits": [e.to_dict() for e in mm.plane.edits],
        "slots": {
            i: {
                "stage": s.stage.name,
                "blueprint": s.blueprint,
                "blend": s.blend_name,
                "events": list(s.events),
                "steps": s.blend.steps if s.blend is not None else None,
                **lineage(mm, i),
            }
            for i, s in mm.plane.slots.items()
        },
        "tensors": {"file": TENSORS, "sha256": digest, "count": len(tensors), "aliases": aliases},
    }
    tmp.replace(path / TENSORS)
    (path / MANIFEST).write_text(yaml.safe_dump(manifest, sort_keys=False))
    return path


def load(path: str | Path, host: nn.Module | None = None, example_inputs=None, *, trust_host_code: bool = False) -> MorphogeneticModel:
    """Rebuild the model saved at `path` on `host`, a fresh instance of the saved host's
    architecture. Without `host`, the manifest's factory builds one, but only with
    `trust_host_code=True`: the factory is code the checkpoint names, and runs as such."""
    path = Path(path)
    manifest = read_manifest(path)
    where = path / MANIFEST
    blob = path / manifest["tensors"]["file"]
    if not blob.is_file():
        raise CheckpointError(f"{path}: {blob.name} is missing")
    data = blob.read_bytes()  # verified and then parsed from these very bytes
    if hashlib.sha256(data).hexdigest() != manifest["tensors"]["sha256"]:
        raise CheckpointError(f"{blob} does not match the sha256 in its manifest: the checkpoint is truncated or was modified")
    try:
        tensors = load_tensors(data)
    except SafetensorError as e:
        raise CheckpointError(f"{where}: field 'tensors.file' names {blob.name}, which is not a safetensors file: {e}") from e
    if host is None:
        host = _build(manifest, path, trust_host_code)
    else:
        _check_host(manifest, tensors, host, path)
    examples = tuple(example_inputs) if example_inputs is not None else manifest_examples(manifest, where)
    try:
        mm = instrument(host, examples, spec=manifest["spec"])
    except Exception as e:  # the host is the caller's; what it was fed comes from the manifest
        raise CheckpointError(
            f"{where}: fields 'example_inputs' and 'spec' do not instrument this {type(host).__name__}: {type(e).__name__}: {e}"
        ) from e
    try:
        apply_edits(mm, [Edit.from_dict(d) for d in manifest["edits"]], until_step=manifest["step_count"])
    except EditError as e:
        field = "step_count" if e.index is None else f"edits[{e.index}]"
        raise CheckpointError(f"{where}: field '{field}' does not replay: {e}") from e
    check_model(manifest, mm, where)
    mm.load_state_dict(check_tensors(manifest, tensors, mm, where))
    for slot_id, state in manifest["slots"].items():
        mm.plane.slot(slot_id).events = list(state["events"])
    mm.host_factory = manifest["host"]["factory"]
    mm.example_inputs = examples
    return mm


def _check_host(manifest: dict, tensors: dict, host: nn.Module, path: Path) -> None:
    """A host passed in must be the architecture the checkpoint was grown from: the same
    class, holding as many values (parameters and buffers) as the saved host's."""
    saved_class = manifest["host"]["class"].rpartition(":")[2]
    aliases = manifest["tensors"]["aliases"]  # a tied weight is stored once, under one of its names
    named = {**tensors, **{alias: tensors[source] for alias, source in aliases.items() if source in tensors}}
    saved = sum(t.numel() for name, t in named.items() if not name.startswith("plane."))
    given = sum(t.numel() for t in host.state_dict().values())
    if type(host).__qualname__ != saved_class or given != saved:
        raise CheckpointError(
            f"{path} was grown from a {saved_class} holding {saved:,} host values (parameters and buffers); the host "
            f"passed is a {type(host).__qualname__} holding {given:,}: pass a fresh instance of the host it was grown from "
            "(esper export: --host FILE defining it)"
        )


def _build(manifest: dict, path: Path, trusted: bool) -> nn.Module:
    factory, cls = manifest["host"]["factory"], manifest["host"]["class"]
    fresh = f"host=<a fresh {cls.rpartition(':')[2]}> (esper export: --host MODEL.py)"
    if not factory:
        raise CheckpointError(f"{path}: the manifest names no way to build its {cls} host; pass {fresh}")
    if not trusted:
        raise CheckpointError(
            f"{path} would build its host by running {factory!r}, code the checkpoint names: pass {fresh}, "
            "or trust_host_code=True (esper export: --trust-host-code) if you trust whoever made the checkpoint"
        )
    try:
        return build_host(factory)
    except Exception as e:  # whatever the factory raises, the way forward is the same
        raise CheckpointError(
            f"{path}: the host factory {factory!r} cannot rebuild the host ({type(e).__name__}: {e}); pass {fresh}"
        ) from e
