"""A fossil is folded into the graph and costs what a hand-written layer costs."""

import torch
from torch import nn

import esper
from esper.kasmina.blueprints import ConvEnhance
from tests.helpers import HostCNN


def _grown():
    torch.manual_seed(0)
    mm = esper.instrument(HostCNN(), (torch.randn(2, 3, 32, 32),))
    p = mm.plane
    p.germinate("block2", "conv_enhance", steps=2)
    p.advance("block2"), p.advance("block2")
    p.step(), p.step()
    p.fossilize("block2")
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


def test_fossilized_model_equals_the_hand_written_one_and_trains_jointly():
    mm = _grown()
    hand = HandWritten(mm)
    x = torch.randn(4, 3, 32, 32)
    mm.eval()
    assert torch.equal(mm(x), hand.eval()(x))
    mm.train()
    mm(x).sum().backward()
    assert mm.block1.conv.weight.grad is not None  # isolation is lifted
    assert mm.plane.slots["block2"].seed.conv.weight.grad is not None
    n_fossil = sum(p.numel() for p in mm.plane.slots["block2"].seed.parameters())
    assert sum(p.numel() for p in mm.parameters()) == sum(p.numel() for p in hand.parameters())
    assert n_fossil == mm.plane.slots["block2"].param_count()
