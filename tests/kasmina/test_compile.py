"""torch.compile over an instrumented model: one graph, the same numbers, no recompiles per tick."""

import copy

import pytest
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


def _step(model, x):
    out = model(x)
    out.square().sum().backward()
    model.plane.guard()
    return out.detach()


def test_compile_training_compiles_once_per_structure():
    # Each step's output and gradients match an eager twin's (float64, as above); edits that
    # change the forward pass compile it again, blend ticks and evaluations do not.
    with default_dtype(torch.float64):
        torch.manual_seed(0)
        mm = esper.instrument(HostCNN(), (torch.randn(2, 3, 16, 16),)).train()
        x = torch.randn(4, 3, 16, 16)
    twin = copy.deepcopy(mm)
    compiled = mm.compile_training(backend="aot_eager")
    assert twin.compiled is None and copy.deepcopy(mm).compiled is None  # a copy runs eagerly

    def steps(n):
        for _ in range(n):
            torch.testing.assert_close(_step(mm, x), _step(twin, x))
            for name, g in grads(twin).items():
                torch.testing.assert_close(grads(mm)[name], g, msg=named(name))
            mm.zero_grad(), twin.zero_grad()
            mm.plane.step(), twin.plane.step()

    steps(2)
    assert compiled.compiles == compiled.structures == 1
    for model in (mm, twin):
        model.plane.germinate("block2", "conv_enhance", steps=3)
        model.plane.advance("block2")
        model.plane.advance("block2")
        torch.manual_seed(1)
        for p in model.plane.seed_parameters("block2"):  # far from identity, so alpha shows
            torch.nn.init.normal_(p, std=0.3)
    steps(3)  # alpha 0, 1/3, 2/3: one graph
    assert compiled.compiles == compiled.structures == 2
    with torch.no_grad():
        mm.eval()(x), mm.train()
    mm.plane.fossilize("block2"), twin.plane.fossilize("block2")
    steps(1)
    assert compiled.compiles == compiled.structures == 3
    assert compiled.summary() == {"compiles": 3, "structures": 3, "cudagraph_refusals": 0}


def test_a_nan_seed_under_compile_is_kept_out_and_culled_at_the_guard():
    # torch.compile cannot branch on the check: h replaces the output on the device, as on a GPU.
    torch.manual_seed(0)
    host = HostCNN()
    twin = copy.deepcopy(host).train()
    mm = esper.instrument(host, (torch.randn(2, 3, 16, 16),)).train()
    mm.plane.germinate("block1", "conv_enhance")
    mm.plane.advance("block1"), mm.plane.advance("block1")
    mm.plane.step()
    with torch.no_grad():
        mm.plane.slots["block1"].seed.proj.weight.fill_(float("nan"))
    mm.compile_training(backend="aot_eager")
    x = torch.randn(2, 3, 16, 16)
    out = mm(x)
    assert torch.equal(out, twin(x))
    assert mm.plane.slots["block1"].stage is esper.SeedStage.BLENDING
    out.sum().backward()
    assert mm.plane.guard() == ["block1"]
    assert mm.plane.edits[-1] == esper.Edit(esper.Op.CULL, "block1", tick=1)


def test_without_a_cpp_compiler_compiling_on_the_cpu_says_what_is_missing(monkeypatch):
    from torch._inductor import cpp_builder

    def missing():
        raise RuntimeError("no working C++ compiler found")

    monkeypatch.setattr(cpp_builder, "get_cpp_compiler", missing)
    mm = esper.instrument(HostCNN(), (torch.randn(2, 3, 16, 16),))
    with pytest.raises(RuntimeError, match=r"C\+\+ compiler .*g\+\+ or clang\+\+"):
        mm.compile_training()
    assert mm.compiled is None


@pytest.mark.slow
def test_inductor_compiled_training_matches_eager():
    # Inductor fuses and reorders the arithmetic: in float64 that moves results by ~1e-15,
    # far inside torch's float64 tolerance, which a wrong alpha or a lost gradient is not.
    with default_dtype(torch.float64):
        torch.manual_seed(0)
        mm = esper.instrument(HostCNN(), (torch.randn(2, 3, 16, 16),)).train()
        mm.plane.germinate("block2", "conv_enhance", blend="sigmoid", steps=2)
        mm.plane.advance("block2"), mm.plane.advance("block2")
        torch.manual_seed(1)
        for p in mm.plane.seed_parameters("block2"):  # far from identity, so the blend shows
            torch.nn.init.normal_(p, std=0.3)
        x = torch.randn(4, 3, 16, 16)
    twin = copy.deepcopy(mm)
    compiled = mm.compile_training()
    for _ in range(2):
        torch.testing.assert_close(_step(mm, x), _step(twin, x))
        for name, g in grads(twin).items():
            torch.testing.assert_close(grads(mm)[name], g, msg=named(name))
        mm.zero_grad(), twin.zero_grad()
        mm.plane.step(), twin.plane.step()
    assert compiled.compiles == 1


def test_the_gardener_compiles_the_model_it_grows_when_asked():
    mm = esper.instrument(HostCNN(), (torch.randn(2, 3, 16, 16),))
    opt = torch.optim.SGD(mm.parameters(), lr=0.1)
    esper.Gardener(mm, "wait", optimizer=opt, epochs=4)
    assert mm.compiled is None
    esper.Gardener(mm, "wait", optimizer=opt, epochs=4, compile=True)
    assert mm.compiled is not None and mm.compiled.summary()["compiles"] == 0  # compiled at its first training step
