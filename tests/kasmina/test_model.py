"""MorphogeneticModel's surface: what it forwards to its host, and where a fossil goes."""

import pytest
import torch

import esper
from esper.kasmina.model import MorphogeneticModel
from tests.helpers import HostCNN


def test_a_name_the_model_does_not_have_is_an_attribute_error_not_a_host_attribute():
    mm = esper.instrument(HostCNN(), (torch.randn(2, 3, 16, 16),))
    assert mm.host.blocks == 3
    with pytest.raises(AttributeError, match=r"no attribute 'blocks' \(the host's own attributes are at \.host\.blocks\)"):
        mm.blocks
    with pytest.raises(AttributeError, match="plnae"):
        mm.plnae  # a typo


def test_a_registered_host_attribute_is_read_through_to_the_host(monkeypatch):
    monkeypatch.setattr(MorphogeneticModel, "host_attributes", MorphogeneticModel.host_attributes)  # restored after
    mm = esper.instrument(HostCNN(), (torch.randn(2, 3, 16, 16),))
    MorphogeneticModel.forward_host_attributes("blocks")
    assert mm.blocks == 3
    with pytest.raises(AttributeError, match="bloks"):
        mm.bloks


def test_fossilizing_folds_the_seed_through_the_models_graph_host():
    mm = esper.instrument(HostCNN(), (torch.randn(2, 3, 16, 16),))
    assert mm.plane.graph_host is mm
    before = mm.code
    for edit in ("germinate", "advance", "advance"):
        getattr(mm.plane, edit)("block2", *(["norm"] if edit == "germinate" else []))
    mm.plane.step(5)
    mm.plane.fossilize("block2")
    assert "plane.block2.seed" in mm.code and "plane.block2_1" in mm.code and mm.code != before
    assert list(mm.plane.slots).index("block2+1") == list(mm.plane.slots).index("block2") + 1
