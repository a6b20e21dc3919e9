"""The named hosts instrument bit-exactly with at least three slots."""

import copy

import pytest
import torch
import torchvision

import esper
from esper.graph.trace import trace
from tests.helpers import HostCNN, TinyGPT, outputs_equal, tiny_bert


def _hosts():
    torch.manual_seed(0)
    yield "host_cnn", HostCNN(), torch.randn(2, 3, 32, 32)
    yield "tiny_gpt", TinyGPT(), torch.randint(0, 256, (2, 16))
    yield "resnet18", torchvision.models.resnet18(weights=None), torch.randn(2, 3, 64, 64)
    yield "mobilenet_v2", torchvision.models.mobilenet_v2(weights=None), torch.randn(2, 3, 64, 64)
    yield "vit_b_16", torchvision.models.vit_b_16(weights=None), torch.randn(1, 3, 224, 224)
    bert, ids = tiny_bert()
    yield "bert", bert, ids


HOSTS = {name: (model, x) for name, model, x in _hosts()}


@pytest.fixture(scope="module", params=list(HOSTS))
def instrumented(request):
    model, x = HOSTS[request.param]
    return request.param, model, x, esper.instrument(model, (x,))


def test_at_least_three_slots_with_readable_ids(instrumented):
    name, model, x, mm = instrumented
    assert len(mm.plane.slots) >= 3
    for slot_id, slot in mm.plane.slots.items():
        assert slot.stage is esper.SeedStage.DORMANT
        assert slot_id in dict(model.named_modules()), f"{slot_id} is not a module path of the host"
        assert slot.shape[0] == x.shape[0] and len(slot.shape) >= 3


def test_bit_exact_in_eval_and_train(instrumented):
    name, model, x, mm = instrumented
    model.eval(), mm.eval()
    with torch.no_grad():
        assert outputs_equal(model(x), mm(x))
    # train mode: BatchNorm statistics move, so compare against a copy of the host
    twin = copy.deepcopy(model).train()
    mm.train()
    torch.manual_seed(1)
    a = twin(x)
    torch.manual_seed(1)
    b = mm(x)
    assert outputs_equal(a, b)
    for (ka, va), (kb, vb) in zip(twin.state_dict().items(), mm.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)
    model.eval()


def test_exactly_the_hosts_parameters_and_buffers(instrumented):
    name, model, x, mm = instrumented
    assert list(model.state_dict()) == list(mm.state_dict())
    host_params = dict(model.named_parameters())
    mm_params = dict(mm.named_parameters())
    assert host_params.keys() == mm_params.keys()
    assert all(host_params[k] is mm_params[k] for k in host_params)
    assert [n for n, _ in model.named_buffers()] == [n for n, _ in mm.named_buffers()]
    assert sum(1 for _ in mm.plane.parameters()) == 0


def test_train_eval_switch_reaches_host_modules(instrumented):
    name, model, x, mm = instrumented
    mm.train()
    assert all(m.training for m in model.modules())
    mm.eval()
    assert not any(m.training for m in model.modules())
    assert not model.training


def test_bert_goes_through_the_export_fallback():
    model, x = HOSTS["bert"]
    mm = esper.instrument(model, (x,))
    assert mm.kind == "hooks"
    assert "encoder.layer.0" in mm.plane.slots
    assert trace(model, (x,)).fx_failure  # says why fx was not used
    mm.train()
    out = mm(x).last_hidden_state
    out.sum().backward()
    assert model.embeddings.word_embeddings.weight.grad is not None


def test_optimizer_steps_match_the_plain_host():
    torch.manual_seed(0)
    host = HostCNN()
    twin = copy.deepcopy(host)
    mm = esper.instrument(host, (torch.randn(2, 3, 32, 32),))
    opt_a = torch.optim.SGD(twin.parameters(), lr=0.1, momentum=0.9)
    opt_b = torch.optim.SGD(mm.parameters(), lr=0.1, momentum=0.9)
    for step in range(3):
        x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
        for m, opt in ((twin, opt_a), (mm, opt_b)):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(m(x), y).backward()
            opt.step()
    for (ka, va), (kb, vb) in zip(twin.state_dict().items(), mm.state_dict().items()):
        assert torch.equal(va, vb), ka


def test_the_original_host_is_left_untouched_by_the_hooks():
    model, x = tiny_bert()
    model.eval()
    with torch.no_grad():
        before = model(x).last_hidden_state
    mm = esper.instrument(model, (x,))
    mm.plane.germinate("encoder.layer.1", "mlp")
    mm.plane.advance("encoder.layer.1")
    mm.plane.advance("encoder.layer.1")
    for _ in range(5):
        mm.plane.step()
    torch.nn.init.normal_(mm.plane.slots["encoder.layer.1"].seed.fc2.weight)
    mm.eval()
    with torch.no_grad():
        assert torch.equal(model(x).last_hidden_state, before)
        assert not torch.equal(mm(x).last_hidden_state, before)
