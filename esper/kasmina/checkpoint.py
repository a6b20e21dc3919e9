"""Checkpoints of instrumented models: safetensors for tensors, a YAML manifest for the rest.

    CHECKPOINT/
      manifest.yaml         format, host factory, example input shapes, slot spec, edit log,
                            tick count, slot events, tensor names and the tensors' sha256
      tensors.safetensors   host and seed weights, buffers, blend schedules

Loading replays the edit log on a fresh host (so every seed module exists again) and
then loads the tensors. Nothing is unpickled.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
import yaml
from safetensors.torch import load_file, save_file
from torch import nn

from esper.kasmina.hosts import build_host, host_factory_of
from esper.kasmina.model import MorphogeneticModel
from esper.kasmina.replay import replay
from esper.leyline import CheckpointError, Edit

FORMAT = "esper-checkpoint/1"
MANIFEST, TENSORS = "manifest.yaml", "tensors.safetensors"


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
    examples = example_inputs if example_inputs is not None else getattr(mm, "example_inputs", ())
    manifest = {
        "format": FORMAT,
        "host": {"class": f"{type(mm.host).__module__}:{type(mm.host).__qualname__}", "factory": host_factory_of(mm.host, getattr(mm, "host_factory", None))},
        "trace": mm.kind,
        "example_inputs": [{"shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch.")} for t in examples],
        "spec": mm.spec,
        "step_count": mm.plane.step_count,
        "edits": [e.to_dict() for e in mm.plane.edits],
        "slots": {i: {"stage": s.stage.name, "blueprint": s.blueprint, "blend": s.blend_name, "events": list(s.events)} for i, s in mm.plane.slots.items()},
        "tensors": {"file": TENSORS, "sha256": digest, "count": len(tensors), "aliases": aliases},
    }
    tmp.replace(path / TENSORS)
    (path / MANIFEST).write_text(yaml.safe_dump(manifest, sort_keys=False))
    return path


def read_manifest(path: str | Path) -> dict:
    path = Path(path)
    if not (path / MANIFEST).is_file():
        raise CheckpointError(f"{path} is not an esper checkpoint: no {MANIFEST}")
    try:
        manifest = yaml.safe_load((path / MANIFEST).read_text())
    except yaml.YAMLError as e:
        raise CheckpointError(f"{path / MANIFEST} is not valid YAML: {e}") from e
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise CheckpointError(f"{path / MANIFEST}: unknown format {manifest.get('format') if isinstance(manifest, dict) else manifest!r}, expected {FORMAT}")
    return manifest


def load(path: str | Path, host: nn.Module | None = None, example_inputs=None) -> MorphogeneticModel:
    """Rebuild the model saved at `path`. Give `host` (a fresh instance of the same
    architecture) when the manifest names no factory for it."""
    path = Path(path)
    manifest = read_manifest(path)
    blob = path / manifest["tensors"]["file"]
    if not blob.is_file():
        raise CheckpointError(f"{path}: {blob.name} is missing")
    if hashlib.sha256(blob.read_bytes()).hexdigest() != manifest["tensors"]["sha256"]:
        raise CheckpointError(f"{blob} does not match the sha256 in its manifest: the checkpoint is truncated or was modified")
    if host is None:
        factory = manifest["host"].get("factory")
        if not factory:
            raise CheckpointError(
                f"{path}: the manifest names no way to build a {manifest['host']['class']} host; pass host=<a fresh instance>"
            )
        host = build_host(factory)
    if example_inputs is None:
        example_inputs = tuple(_example(e) for e in manifest["example_inputs"])
    edits = [Edit.from_dict(d) for d in manifest["edits"]]
    mm = replay(host, example_inputs, edits, spec=manifest["spec"], until_step=manifest["step_count"])
    tensors = load_file(str(blob))
    for alias, source in manifest["tensors"].get("aliases", {}).items():
        tensors[alias] = tensors[source]
    missing = set(mm.state_dict()) - set(tensors)
    unexpected = set(tensors) - set(mm.state_dict())
    if missing or unexpected:
        raise CheckpointError(
            f"{path} does not fit the rebuilt model: missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}"
        )
    mm.load_state_dict(tensors)
    for slot_id, state in manifest["slots"].items():
        slot = mm.plane.slot(slot_id)
        if slot.stage.name != state["stage"]:
            raise CheckpointError(f"{path}: replaying the edit log left slot '{slot_id}' in {slot.stage.name}, manifest says {state['stage']}")
        slot.events = list(state["events"])
    mm.host_factory = manifest["host"].get("factory")
    mm.example_inputs = example_inputs
    return mm


def _example(meta: dict) -> torch.Tensor:
    dtype = getattr(torch, meta["dtype"])
    if dtype.is_floating_point:
        return torch.randn(meta["shape"], dtype=dtype)
    return torch.zeros(meta["shape"], dtype=dtype)
