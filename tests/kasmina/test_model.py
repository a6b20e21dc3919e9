"""MorphogeneticModel's surface: what it forwards to its host, and where a fossil goes."""

import pytest
import torch

import esper
from tests.helpers import HostCNN, tiny_bert


def test_a_name_the_model_does_not_have_is_an_attribute_error_not_a_host_attribute():
    mm = esper.instrument(HostCNN(), (torch.randn(2, 3, 16, 16),))
    assert mm.host.blocks == 3
    with pytest.raises(AttributeError, match=r"no attribute 'blocks' \(the host's own attributes are at \.host\.blocks\)"):
        mm.blocks
    with pytest.raises(AttributeError, match="plnae"):
        mm.plnae  # a typo


def test_what_huggingface_trainers_read_is_forwarded_to_the_host():
    model, ids = tiny_bert()
    mm = esper.instrument(model, (ids,))
    assert mm.config is model.config and mm.main_input_name == model.main_input_name


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
