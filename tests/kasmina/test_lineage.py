"""A slot opened after a fossil records, as data, the injection point it descends from and its generation."""

from __future__ import annotations

import pytest
import torch
import yaml

import esper
from esper.leyline import CheckpointError
from tests.graph.test_tracing import TrainOnlyNoise
from tests.helpers import HostCNN

X = torch.randn(2, 3, 16, 16)


def _fossilize(mm, slot_id: str, blueprint: str = "norm") -> None:
    p = mm.plane
    p.germinate(slot_id, blueprint, steps=1)
    p.advance(slot_id), p.advance(slot_id)
    p.step()
    p.fossilize(slot_id)


def _lineage(mm) -> dict[str, tuple[str, int]]:
    return {i: (mm.points[i].base, mm.points[i].generation) for i in mm.plane.slots}


def test_each_fossil_opens_the_next_generation_of_its_injection_point():
    mm = esper.instrument(HostCNN(), (X,))
    _fossilize(mm, "block2")
    _fossilize(mm, "block2+1")
    assert _lineage(mm) == {
        "block1": ("block1", 0),
        "block2": ("block2", 0),
        "block2+1": ("block2", 1),
        "block2+2": ("block2", 2),
        "block3": ("block3", 0),
    }
    assert mm.points["block2+2"].node == mm.points["block2"].node  # the same place in the stream


def test_lineage_is_not_read_back_from_a_slot_name_that_holds_a_plus():
    mm = esper.instrument(HostCNN(), (X,), spec={"names": {"block2": "conv+norm"}})
    _fossilize(mm, "conv+norm")
    assert "conv+norm+1" in mm.plane.slots and _lineage(mm)["conv+norm+1"] == ("conv+norm", 1)


def test_a_hooked_host_records_the_same_lineage():
    mm = esper.instrument(TrainOnlyNoise(), (torch.randn(2, 4, 8),))
    assert mm.kind == "hooks"
    slot = next(iter(mm.plane.slots))
    _fossilize(mm, slot, "lora")
    assert _lineage(mm)[f"{slot}+1"] == (slot, 1)


def test_a_replayed_edit_log_and_a_checkpoint_rebuild_the_lineage(tmp_path):
    mm = esper.instrument(HostCNN(), (X,))
    _fossilize(mm, "block2")
    _fossilize(mm, "block2+1")
    assert _lineage(esper.replay(HostCNN(), (X,), mm.plane.edits, spec=mm.spec)) == _lineage(mm)
    esper.save(mm, tmp_path / "ck")
    saved = yaml.safe_load((tmp_path / "ck" / "manifest.yaml").read_text())["slots"]
    assert (saved["block2+2"]["base"], saved["block2+2"]["generation"]) == ("block2", 2)
    assert _lineage(esper.load(tmp_path / "ck", host=HostCNN())) == _lineage(mm)


def test_a_checkpoint_saved_without_lineage_derives_it_and_a_wrong_one_is_refused(tmp_path):
    mm = esper.instrument(HostCNN(), (X,))
    _fossilize(mm, "block2")
    esper.save(mm, tmp_path / "ck")
    where = tmp_path / "ck" / "manifest.yaml"
    manifest = yaml.safe_load(where.read_text())
    older = {
        **manifest,
        "slots": {i: {k: v for k, v in s.items() if k not in ("base", "generation")} for i, s in manifest["slots"].items()},
    }
    where.write_text(yaml.safe_dump(older, sort_keys=False))
    assert _lineage(esper.load(tmp_path / "ck", host=HostCNN())) == _lineage(mm)
    manifest["slots"]["block2+1"]["base"] = "block1"
    where.write_text(yaml.safe_dump(manifest, sort_keys=False))
    with pytest.raises(CheckpointError, match=r"slots\.block2\+1\.base"):
        esper.load(tmp_path / "ck", host=HostCNN())
