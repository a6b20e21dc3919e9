"""A fossil is folded into the graph and costs what a hand-written layer costs."""

import pytest
import torch
from torch import nn

import esper
from esper.kasmina.blueprints import ConvEnhance
from tests.helpers import HostCNN


def _train_seed(mm, steps=3):
    """A few SGD steps, so that the seed no longer returns its input (a zero-initialised
    seed would pass every comparison below even if the fossil were dropped)."""
    opt = torch.optim.SGD(mm.parameters(), lr=0.5)
    torch.manual_seed(1)
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(mm(x), y).backward()
        opt.step()


def _blended(blend="linear"):
    """HostCNN with a trained block2 seed blended all the way in (alpha 1), not yet fossilized."""
    torch.manual_seed(0)
    mm = esper.instrument(HostCNN(), (torch.randn(2, 3, 32, 32),))
    p = mm.plane
    p.germinate("block2", "conv_enhance", blend=blend, steps=2)
    p.advance("block2")
    _train_seed(mm)
    p.advance("block2")
    p.step(), p.step()
    return mm


def _grown():
    mm = _blended()
    mm.plane.fossilize("block2")
    return mm


def test_fossil_replaces_the_slot_node_by_a_plain_submodule_call():
    mm = _grown()
    code = mm.code
    assert "self.plane.block2(" not in code
    assert "self.plane.block2.seed(" in code
    assert isinstance(mm.plane.slots["block2"].seed, ConvEnhance)
    fossil_node = next(n for n in mm.graph.nodes if n.name == "fossil_block2")
    assert fossil_node.op == "call_module" and fossil_node.target == "plane.block2.seed"


def test_the_region_keeps_growing_through_a_new_slot_after_the_fossil():
    mm = _grown()
    assert list(mm.plane.slots) == ["block1", "block2", "block2+1", "block3"]
    mm.plane.germinate("block2+1", "attention", steps=1)
    mm.plane.advance("block2+1"), mm.plane.advance("block2+1")
    mm.plane.step()
    mm.plane.fossilize("block2+1")
    assert "block2+2" in mm.plane.slots
    code = mm.code
    assert code.index("self.plane.block2.seed(") < code.index("self.plane.block2_1.seed(") < code.index("self.plane.block2_2(")


class HandWritten(nn.Module):
    """HostCNN with the same conv_enhance layer written in by hand."""

    def __init__(self, grown):
        super().__init__()
        self.block1, self.block2, self.block3 = grown.block1, grown.block2, grown.block3
        self.pool, self.classifier = grown.pool, grown.classifier
        self.extra = grown.plane.slots["block2"].seed

    def forward(self, x):
        x = self.pool(self.block1(x))
        x = self.pool(self.extra(self.block2(x)))
        x = self.pool(self.block3(x))
        return self.classifier(torch.flatten(x.mean(dim=(2, 3)), 1))


def _host_grad(mm, x):
    mm.zero_grad()
    mm(x).sum().backward()
    return mm.block1.conv.weight.grad.clone()


def test_fossilized_model_equals_the_hand_written_one_and_trains_jointly():
    mm = _grown()
    seed = mm.plane.slots["block2"].seed
    x = torch.randn(4, 3, 32, 32)
    mm.eval()
    h = mm.block2(mm.pool(mm.block1(x)))
    assert not torch.allclose(seed(h), h, atol=1e-3)  # trained: dropping the fossil would show
    hand = HandWritten(mm).eval()
    assert torch.equal(mm(x), hand(x))
    mm.train(), hand.train()
    assert torch.equal(_host_grad(mm, x), _host_grad(hand, x))  # gradients reach the host through the fossil
    assert seed.conv.weight.grad is not None
    n_fossil = sum(p.numel() for p in seed.parameters())
    assert sum(p.numel() for p in mm.parameters()) == sum(p.numel() for p in hand.parameters())
    assert n_fossil == mm.plane.slots["block2"].param_count()


@pytest.mark.parametrize("blend", ["linear", "sigmoid", "gated"])
def test_fossilizing_at_alpha_one_keeps_the_output_and_lifts_isolation(blend, float64):
    mm = _blended(blend)
    x = torch.randn(4, 3, 32, 32)
    mm.eval()
    before, isolated = mm(x).detach(), _host_grad(mm, x)
    mm.plane.fossilize("block2")
    after, joint = mm(x).detach(), _host_grad(mm, x)
    # The blend computes h + alpha * (s - h): equal to the fossil up to rounding, ~1e-16
    # in float64, so torch's float64 tolerance (1e-7) shows any other difference.
    assert before.dtype == torch.float64
    torch.testing.assert_close(after, before)
    assert not torch.allclose(before, mm.eval().host(x), atol=1e-3)  # the seed is really in the output
    # While blending the host's gradient skips the seed; once fossilized it flows through it.
    assert not torch.allclose(isolated, joint, atol=1e-4)
