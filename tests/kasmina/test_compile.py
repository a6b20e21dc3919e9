"""torch.compile over an instrumented model: one graph, the same numbers, no recompiles per tick."""

import copy

import torch
from torch._dynamo.utils import counters

import esper
from tests.helpers import HostCNN, default_dtype, grads, named


def _growing_model():
    torch.manual_seed(0)
    mm = esper.instrument(HostCNN(), (torch.randn(2, 3, 16, 16),)).train()
    mm.plane.germinate("block1", "conv_enhance")
    mm.plane.advance("block1")  # TRAINING: isolated, in the graph through straight_through
    mm.plane.germinate("block2", "depthwise", blend="gated", steps=4)
    mm.plane.advance("block2"), mm.plane.advance("block2")  # BLENDING with a learned gate
    mm.plane.step()
    torch.manual_seed(1)
    for p in mm.plane.seed_parameters("block2"):  # a fresh seed starts near identity: alpha would not show
        torch.nn.init.normal_(p, std=0.3)
    return mm


def test_compiled_model_matches_eager_and_blend_ticks_do_not_recompile():
    # AOT autograd may decompose and reorder what eager runs as one kernel (BatchNorm's
    # backward, for one), so the two agree up to rounding. In float64 that rounding is
    # ~1e-15; torch's float64 tolerance (1e-7) is far above it, and far below what a
    # dropped blend, a stale alpha or a missing gradient path would change.
    torch._dynamo.reset()
    with default_dtype(torch.float64):
        mm = _growing_model()
        x = torch.randn(4, 3, 16, 16)
    twin = copy.deepcopy(mm)
    compiled = torch.compile(mm, fullgraph=True, backend="aot_eager")  # fullgraph: a graph break fails
    outputs = []
    for tick in range(3):
        got, want = compiled(x), twin(x)
        assert got.dtype == torch.float64
        torch.testing.assert_close(got, want)
        got.square().sum().backward()
        want.square().sum().backward()
        assert grads(mm).keys() == grads(twin).keys()
        for name, g in grads(twin).items():
            torch.testing.assert_close(grads(mm)[name], g, msg=named(name))
        mm.zero_grad(), twin.zero_grad()
        if tick == 0:
            graphs = counters["stats"]["unique_graphs"]
        outputs.append(got.detach())
        mm.plane.step(), twin.plane.step()
    assert counters["stats"]["unique_graphs"] == graphs  # alpha moved three times, one graph
    assert not torch.equal(outputs[0], outputs[1])  # and the ticks did reach the compiled graph
