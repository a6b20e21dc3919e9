"""Blend schedules: the alphas each one documents, a gate that learns, and user-registered blends."""

import math

import pytest
import torch

import esper
from esper.kasmina import blending
from esper.kasmina.blending import BlendAlgorithm, build_blend, register_blend
from tests.helpers import HostCNN

SHAPE = (1, 8, 4, 4)


def alphas(name, steps, ticks):
    blend = build_blend(name, SHAPE, steps)
    seen = [blend.scheduled_alpha()]
    for _ in range(ticks):
        blend.tick()
        seen.append(blend.scheduled_alpha())
    return seen


@pytest.mark.parametrize("steps", [1, 3, 4, 7])
def test_linear_moves_by_equal_steps_and_stops_at_one(steps):
    assert alphas("linear", steps, steps + 2) == pytest.approx([t / steps for t in range(steps + 1)] + [1.0, 1.0])


@pytest.mark.parametrize("steps", [2, 4, 5, 10])
def test_sigmoid_follows_its_documented_formula(steps):
    def sig(v):
        return 1 / (1 + math.exp(-v))

    # alpha = (sig(k (t/steps - 1/2)) - sig(-k/2)) / (sig(k/2) - sig(-k/2)), k = 10
    expected = [(sig(10 * (t / steps - 0.5)) - sig(-5)) / (sig(5) - sig(-5)) for t in range(steps + 1)]
    got = alphas("sigmoid", steps, steps)
    assert got == pytest.approx(expected, abs=1e-12)
    assert got[0] == 0.0 and got[-1] == pytest.approx(1.0)
    assert all(a < b for a, b in zip(got, got[1:]))
    if steps >= 4:
        assert got[1] < 1 / steps  # slower than linear at the start, the point of an S-curve


def test_the_gated_blend_scales_the_schedule_by_a_gate_that_learns():
    torch.manual_seed(0)
    mm = esper.instrument(HostCNN(), (torch.randn(2, 3, 32, 32),))
    p = mm.plane
    p.germinate("block2", "conv_enhance", blend="gated", steps=2)
    p.advance("block2"), p.advance("block2")
    p.step()  # scheduled alpha 1/2
    slot = p.slots["block2"]
    torch.nn.init.normal_(slot.seed.proj.weight, std=0.5)  # so that the seed's output differs from its input
    x = torch.randn(4, *slot.shape[1:])
    gate = slot.blend.gate(x)
    assert gate.shape == (4, slot.shape[1], 1, 1) and ((gate > 0) & (gate < 1)).all()
    torch.testing.assert_close(slot.blend.alpha(x), 0.5 * gate)
    before = slot.blend.alpha(x).detach()
    opt = torch.optim.SGD(slot.blend.parameters(), lr=1.0)
    inputs, target = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    torch.nn.functional.cross_entropy(mm(inputs), target).backward()
    assert all(q.grad is not None and q.grad.abs().sum() > 0 for q in slot.blend.gate.mlp[2].parameters())
    opt.step()
    assert not torch.allclose(slot.blend.alpha(x), before)  # the task loss moved the gate


def test_a_registered_blend_runs_in_a_slot(monkeypatch):
    monkeypatch.setattr(blending, "_BLENDS", dict(blending._BLENDS))  # leave the registry as it was

    @register_blend("quadratic")
    class Quadratic(BlendAlgorithm):
        def schedule(self, progress):  # a float for telemetry, a device tensor in the forward pass
            return progress**2

    assert "quadratic" in blending.blend_names()
    torch.manual_seed(0)
    mm = esper.instrument(HostCNN(), (torch.randn(2, 3, 32, 32),))
    p = mm.plane
    p.germinate("block1", "conv_enhance", blend="quadratic", steps=4)
    p.advance("block1"), p.advance("block1")
    slot = p.slots["block1"]
    torch.nn.init.normal_(slot.seed.proj.weight, std=0.5)
    assert isinstance(slot.blend, Quadratic)
    p.step(3)
    assert slot.alpha == pytest.approx(9 / 16)
    h = torch.randn(2, *slot.shape[1:])
    s = slot.seed(h)
    assert not torch.allclose(s, h, atol=1e-3)
    torch.testing.assert_close(slot(h), h + 9 / 16 * (s - h))


@pytest.mark.parametrize("name", ["linear", "sigmoid", "gated"])
def test_the_forward_pass_reads_alpha_computed_at_the_tick(name):
    # The buffer holds, after each tick, a load and a cast, exactly the float64 schedule
    # rounded once to the dtype the blend runs in; under autocast (x in another dtype)
    # alpha is rounded once from float64 to x's dtype.
    def exact(blend, dtype):
        return blend.schedule(torch.tensor(blend.progress, dtype=torch.float64)).to(dtype)

    blend = build_blend(name, SHAPE, 5)
    x = torch.randn(SHAPE)
    for _ in range(6):
        assert torch.equal(blend.value, exact(blend, torch.float32))
        if name != "gated":
            assert blend.alpha(x) is blend.value  # nothing computed per call
            assert torch.equal(blend.alpha(x.bfloat16()), exact(blend, torch.bfloat16))
        blend.tick()
    blend.double()
    assert blend.value.dtype == torch.float64 and torch.equal(blend.value, exact(blend, torch.float64))
    fresh = build_blend(name, SHAPE, 5)
    fresh.load_state_dict(blend.float().state_dict())
    assert fresh.ticks == 5 and torch.equal(fresh.value, exact(fresh, torch.float32))
    assert "value" not in blend.state_dict()  # derived from t: checkpoints stay as they were
