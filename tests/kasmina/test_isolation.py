"""Gradient isolation per slot, and what happens to a seed that goes non-finite."""

import copy

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import esper
from esper.kasmina import slot as slot_module
from esper.kasmina.blueprints import blueprints_for
from esper.leyline import SeedStage
from tests.helpers import HostCNN, grads
from tests.properties.hosts import random_hosts


@settings(max_examples=15)
@given(random_hosts(), st.data())
def test_host_gradients_are_bit_identical_with_a_training_seed(host, data):
    model, x = host
    twin = copy.deepcopy(model).train()
    mm = esper.instrument(model, (x,)).train()
    slot_id = data.draw(st.sampled_from(list(mm.plane.slots)))
    slot = mm.plane.slots[slot_id]
    blueprint = data.draw(st.sampled_from(blueprints_for(slot.shape)))
    blend = data.draw(st.sampled_from(["linear", "sigmoid", "gated"]))
    mm.plane.germinate(slot_id, blueprint, blend=blend)
    mm.plane.advance(slot_id)
    assert slot.stage is SeedStage.TRAINING
    for p in slot.seed_parameters():  # a seed that is far from identity
        torch.nn.init.normal_(p, std=0.5)
    torch.manual_seed(0)
    out = mm(x)
    torch.manual_seed(0)
    ref = twin(x)
    assert torch.equal(out, ref)
    out.float().square().mean().backward()
    ref.float().square().mean().backward()
    host_grads = {n: g for n, g in grads(mm).items() if not n.startswith("plane.")}
    assert host_grads.keys() == grads(twin).keys()
    assert all(torch.equal(host_grads[n], g) for n, g in grads(twin).items())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in slot.seed_parameters())


def test_blending_keeps_the_hosts_gradient_whole_upstream():
    torch.manual_seed(0)
    mm = esper.instrument(HostCNN(), (torch.randn(4, 3, 16, 16),)).train()
    mm.plane.germinate("block2", "conv_enhance", steps=2)
    mm.plane.advance("block2"), mm.plane.advance("block2")
    mm.plane.step()
    x = torch.randn(4, 3, 16, 16)
    h = mm.block2(mm.pool(mm.block1(x))).detach().requires_grad_()
    out = mm.plane.slots["block2"](h)
    g = torch.randn_like(out)
    out.backward(g)
    assert torch.equal(h.grad, g)  # dh = g whatever alpha is


def _blending_nan_seed():
    """A HostCNN with a BLENDING seed at block1 whose weights are NaN; its twin; an input."""
    torch.manual_seed(0)
    host = HostCNN()
    twin = copy.deepcopy(host)
    mm = esper.instrument(host, (torch.randn(2, 3, 16, 16),)).train()
    mm.plane.germinate("block1", "conv_enhance")
    mm.plane.advance("block1"), mm.plane.advance("block1")
    mm.plane.step()
    with torch.no_grad():
        mm.plane.slots["block1"].seed.proj.weight.fill_(float("nan"))
    return mm, twin, torch.randn(2, 3, 16, 16)


def test_nan_output_culls_the_seed_and_the_host_keeps_training():
    mm, twin, x = _blending_nan_seed()
    out = mm(x)
    assert torch.isfinite(out).all() and torch.equal(out, twin.train()(x))
    slot = mm.plane.slots["block1"]
    assert slot.stage is SeedStage.CULLED
    assert any("non-finite seed output" in e for e in mm.plane.telemetry()[0]["events"])
    assert mm.plane.edits[-1] == esper.Edit(esper.Op.CULL, "block1", tick=1)  # logged, so replay agrees
    again = esper.replay(HostCNN(), (x,), mm.plane.edits, spec=mm.spec)
    assert again.plane.slots["block1"].stage is SeedStage.CULLED


def test_nan_gradient_culls_the_seed_before_the_optimizer_step():
    torch.manual_seed(0)
    host = HostCNN()
    twin = copy.deepcopy(host)
    mm = esper.instrument(host, (torch.randn(2, 3, 16, 16),)).train()
    opt = torch.optim.SGD(mm.parameters(), lr=0.1)
    mm.plane.attach_optimizer(opt, lr=0.01)
    mm.plane.germinate("block3", "depthwise")
    mm.plane.advance("block3")
    seed_params = mm.plane.seed_parameters("block3")
    assert any(g.get("esper_slot") == "block3" for g in opt.param_groups)
    seed_params[0].register_hook(lambda g: g * float("nan"))
    x, y = torch.randn(2, 3, 16, 16), torch.tensor([1, 2])
    torch.nn.functional.cross_entropy(mm(x), y).backward()
    assert mm.plane.guard() == ["block3"]
    assert all(g.get("esper_slot") != "block3" for g in opt.param_groups)
    opt.step()
    twin_opt = torch.optim.SGD(twin.parameters(), lr=0.1)
    torch.nn.functional.cross_entropy(twin.train()(x), y).backward()
    twin_opt.step()
    for (n, a), (_, b) in zip(twin.state_dict().items(), mm.state_dict().items()):
        assert torch.equal(a, b), n
    assert "non-finite seed gradient" in " ".join(mm.plane.telemetry()[2]["events"])
    assert mm.plane.edits[-1].op is esper.Op.CULL and mm.plane.edits[-1].slot == "block3"


def test_attach_optimizer_adds_seed_parameters_as_they_appear():
    mm = esper.instrument(HostCNN(), (torch.randn(2, 3, 16, 16),))
    opt = torch.optim.Adam(mm.parameters(), lr=1e-3)
    n_groups = len(opt.param_groups)
    mm.plane.attach_optimizer(opt, lr=5e-4)
    mm.plane.germinate("block1", "norm", blend="gated")
    assert len(opt.param_groups) == n_groups + 1
    group = opt.param_groups[-1]
    assert group["lr"] == 5e-4 and {id(p) for p in group["params"]} == {id(p) for p in mm.plane.seed_parameters("block1")}
    mm.plane.cull("block1")
    assert len(opt.param_groups) == n_groups


def test_a_copy_does_not_touch_the_originals_optimizer():
    mm = esper.instrument(HostCNN(), (torch.randn(2, 3, 16, 16),))
    opt = torch.optim.SGD(mm.parameters(), lr=0.1)
    mm.plane.attach_optimizer(opt)
    mm.plane.germinate("block1", "norm")
    twin = copy.deepcopy(mm)
    twin.plane.cull("block1")
    assert any(g.get("esper_slot") == "block1" for g in opt.param_groups)
    twin.plane.germinate("block2", "norm")
    assert not any(g.get("esper_slot") == "block2" for g in opt.param_groups)
    assert twin.plane.slots["block2"].seed.scale.device == twin.block2.conv.weight.device


def test_on_a_gpu_a_nan_output_is_swapped_out_on_the_device_and_culled_at_the_guard(monkeypatch):
    # Where reading a flag would stall the device queue (CUDA), the forward pass does not
    # read it: the seed's output is replaced on the device and plane.guard() culls.
    monkeypatch.setattr(slot_module, "reads_are_free", lambda device: False)
    mm, twin, x = _blending_nan_seed()
    out = mm(x)
    assert torch.equal(out, twin.train()(x))  # exactly the host's output, NaN kept out
    assert mm.plane.slots["block1"].stage is SeedStage.BLENDING  # nothing read yet
    out.sum().backward()
    assert mm.plane.guard() == ["block1"]
    assert mm.plane.slots["block1"].stage is SeedStage.CULLED
    assert any("non-finite seed output" in e for e in mm.plane.telemetry()[0]["events"])
    assert mm.plane.edits[-1] == esper.Edit(esper.Op.CULL, "block1", tick=1)


def test_deferred_culls_leave_a_nan_output_to_the_guard_on_the_cpu_too():
    # Under several processes the cull must be decided once for every rank: with
    # plane.defer_culls the CPU takes the device path above, slots added later included.
    mm, twin, x = _blending_nan_seed()
    mm.plane.defer_culls = True
    assert mm.plane.add_slot("spare", (2, 8, 16, 16)).defer_culls and mm.plane.slots["block1"].defer_culls
    out = mm(x)
    assert torch.equal(out, twin.train()(x))
    assert mm.plane.slots["block1"].stage is SeedStage.BLENDING
    out.sum().backward()
    assert mm.plane.guard() == ["block1"]


def test_the_guard_checks_each_seeds_gradients_and_leaves_their_bits_alone():
    torch.manual_seed(0)
    mm = esper.instrument(HostCNN(), (torch.randn(2, 3, 16, 16),)).train()
    for slot_id in ("block1", "block2", "block3"):
        mm.plane.germinate(slot_id, "conv_enhance")
        mm.plane.advance(slot_id)
    mm(torch.randn(2, 3, 16, 16)).square().mean().backward()
    bad = {"block1": float("-inf"), "block3": float("nan")}
    for slot_id, value in bad.items():
        mm.plane.seed_parameters(slot_id)[1].grad.view(-1)[0] = value
    before = {slot_id: [p.grad.clone() for p in mm.plane.seed_parameters(slot_id)] for slot_id in mm.plane.slots}
    live, health = mm.plane.health()
    assert [s.slot_id for s in live] == ["block1", "block2", "block3"]
    assert health.tolist() == [[True, False], [True, True], [True, False]]
    for slot_id, kept in before.items():  # the check multiplies by one: every bit stays
        assert all(torch.equal(a.view(torch.int32), p.grad.view(torch.int32)) for a, p in zip(kept, mm.plane.seed_parameters(slot_id)))


def test_a_training_seed_whose_output_is_nan_is_culled_and_the_output_stays_the_hosts():
    torch.manual_seed(0)
    host = HostCNN()
    twin = copy.deepcopy(host).train()
    mm = esper.instrument(host, (torch.randn(2, 3, 16, 16),)).train()
    mm.plane.germinate("block2", "depthwise")
    mm.plane.advance("block2")
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        next(iter(mm.plane.slots["block2"].seed.parameters())).fill_(float("inf"))
    assert torch.equal(mm(x), twin(x))
    assert mm.plane.slots["block2"].stage is SeedStage.CULLED
    assert "output_finite" not in dict(mm.plane.named_buffers())  # the flag lives with the seed
