"""Placement: slot count, max_slots, YAML specs, and readable ids."""

import pytest
import torch
import torchvision
import yaml

import esper
from esper.graph.placement import default_slot_count
from tests.helpers import HostCNN


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    return torchvision.models.resnet18(weights=None).eval(), torch.randn(2, 3, 64, 64)


def test_default_count_is_the_documented_ceil_sqrt_2n():
    # The documented examples (docs/how-it-works.md, the docstring): resnet18, vit_b_16, mobilenet_v2.
    assert [default_slot_count(n) for n in (3, 8, 13, 32)] == [3, 4, 6, 8]
    for n in range(1, 400):
        k = default_slot_count(n)
        if n <= 3:
            assert k == n  # every candidate, when there are at most three
        else:
            # ceil(sqrt(2n)) in integers: the smallest k with k * k >= 2n, never below 3.
            assert k * k >= 2 * n and (k == 3 or (k - 1) ** 2 < 2 * n), n


def test_resnet_gets_its_stages(resnet):
    model, x = resnet
    mm = esper.instrument(model, (x,))
    assert list(mm.plane.slots) == ["layer1", "layer2", "layer3", "layer4"]
    assert [s.shape[1] for s in mm.plane.slots.values()] == [64, 128, 256, 512]
    assert len(mm.candidates) == 8  # every BasicBlock ends on a cut point


def test_max_slots_caps_and_spreads(resnet):
    model, x = resnet
    mm = esper.instrument(model, (x,), max_slots=2)
    assert len(mm.plane.slots) == 2
    idx = [mm.points[s].index for s in mm.plane.slots]
    assert idx[0] < idx[1]


def test_spec_include_exclude_and_names(resnet, tmp_path):
    model, x = resnet
    spec = tmp_path / "slots.yaml"
    spec.write_text(yaml.safe_dump({"include": ["layer*"], "exclude": ["layer4", "layer1.0"], "names": {"layer2": "mid"}}))
    mm = esper.instrument(model, (x,), spec=str(spec))
    assert list(mm.plane.slots) == ["layer1", "layer2.0", "mid", "layer3.0", "layer3", "layer4.0"]


def test_resolved_spec_reproduces_the_placement(resnet, tmp_path):
    model, x = resnet
    first = esper.instrument(model, (x,), spec={"include": ["layer2*", "layer3.0"], "names": {"layer3.0": "deep"}})
    path = tmp_path / "resolved.yaml"
    path.write_text(yaml.safe_dump(first.spec))
    again = esper.instrument(model, (x,), spec=str(path))
    assert list(again.plane.slots) == list(first.plane.slots) == ["layer2.0", "layer2", "deep"]
    assert [s.shape for s in again.plane.slots.values()] == [s.shape for s in first.plane.slots.values()]


def test_spec_naming_an_unknown_point_says_which_exist():
    with pytest.raises(esper.TraceError, match="candidates: block1, block2, block3"):
        esper.instrument(HostCNN(), (torch.randn(1, 3, 32, 32),), spec={"slots": [{"id": "x", "at": "nowhere"}]})


def test_missing_spec_file_is_a_clear_error():
    with pytest.raises(FileNotFoundError, match="slot spec not found"):
        esper.instrument(HostCNN(), (torch.randn(1, 3, 32, 32),), spec="no/such/spec.yaml")
