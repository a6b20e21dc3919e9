"""The host zoo: every host builds, fits the budget, and instruments without changing what it computes."""

import copy

import pytest
import torch

import esper
from esper.simic.host_zoo import HOSTS, TRAINING_HOSTS, UNSEEN_HOSTS, build_host
from tests.helpers import HostCNN  # examples/host_cnn.py


def _family(name: str) -> str:
    return name.split("-")[0]


@pytest.mark.parametrize("name", list(HOSTS))
def test_host_builds_within_budget(name):
    torch.manual_seed(0)
    model = build_host(name, 7).eval()
    with torch.no_grad():
        for size in (16, 32):
            assert model(torch.randn(2, 3, size, size)).shape == (2, 7), size
    assert 5_000 <= sum(p.numel() for p in model.parameters()) <= 120_000
    again = build_host(name, 7)  # a fresh host each time, sharing nothing
    assert not {id(p) for p in model.parameters()} & {id(p) for p in again.parameters()}


@pytest.mark.parametrize("name", list(HOSTS))
def test_host_instruments_bit_exact(name):
    torch.manual_seed(0)
    model = build_host(name, 10)
    twin = copy.deepcopy(model)
    mm = esper.instrument(model, (torch.randn(2, 3, 32, 32),))
    assert len(mm.plane.slots) >= 2
    x = torch.randn(4, 3, 32, 32)
    mm.eval(), twin.eval()
    with torch.no_grad():
        assert torch.equal(mm(x), twin(x))


def test_training_and_unseen_hosts():
    assert set(TRAINING_HOSTS) | set(UNSEEN_HOSTS) == set(HOSTS)
    assert len(TRAINING_HOSTS) >= 8 and len(set(TRAINING_HOSTS)) == len(TRAINING_HOSTS)
    training_families = {_family(n) for n in TRAINING_HOSTS}
    assert training_families >= {"plain", "residual", "inverted", "vgg"}
    assert len(UNSEEN_HOSTS) == 3 and not set(UNSEEN_HOSTS) & set(TRAINING_HOSTS)
    assert {_family(n) for n in UNSEEN_HOSTS} - training_families  # a family pretraining never sees


def test_plain_w16_b3_is_the_benchmark_host():
    zoo, host = build_host("plain-w16-b3", 10), HostCNN(10, width=16, blocks=3)
    assert [(k, v.shape) for k, v in zoo.state_dict().items()] == [(k, v.shape) for k, v in host.state_dict().items()]
    zoo.load_state_dict(host.state_dict())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(zoo.eval()(x), host.eval()(x))
    slots = [esper.instrument(m, (x,)).plane.slots for m in (zoo, host)]
    assert [(k, s.shape) for k, s in slots[0].items()] == [(k, s.shape) for k, s in slots[1].items()]


def test_unknown_host_names_the_known_ones():
    with pytest.raises(ValueError, match="unknown host 'resnet50'") as err:
        build_host("resnet50", 10)
    assert all(name in str(err.value) for name in HOSTS)
