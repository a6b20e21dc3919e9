"""Tracing front-ends: side inputs, leaf retry, the export fallback, and clear failures."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import esper
from esper.graph.analysis import cut_points
from esper.graph.trace import trace


class MaskedBlock(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.fc = nn.Linear(d, d)

    def forward(self, x, mask):
        return x + self.fc(x) * mask[..., None]


class MaskedStack(nn.Module):
    """Every block reads a mask built from the input's size: it must not hide the cut points."""

    def __init__(self, d=16, depth=4):
        super().__init__()
        self.embed = nn.Linear(d, d)
        self.blocks = nn.ModuleList(MaskedBlock(d) for _ in range(depth))

    def forward(self, x):
        mask = x.new_ones(x.size(0), x.size(1)).tril()
        h = self.embed(x)
        for b in self.blocks:
            h = b(h, mask)
        return h


def test_side_inputs_do_not_hide_the_residual_stream():
    mm = esper.instrument(MaskedStack(), (torch.randn(3, 5, 16),))
    assert mm.kind == "fx"
    assert {p.id for p in mm.candidates} == {"blocks.0", "blocks.1", "blocks.2", "blocks.3"}


class Branchy(nn.Module):
    def forward(self, x):
        if x.sum() > 0:  # control flow on a tensor value: fx cannot follow it
            return x * 2
        return x


class WithBranchyPart(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1))
        self.odd = Branchy()
        self.body = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1))
        self.tail = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1))

    def forward(self, x):
        return self.tail(self.body(self.odd(self.stem(x)))).mean((2, 3))


def test_untraceable_submodule_is_retried_as_a_leaf():
    model = WithBranchyPart().eval()
    x = torch.randn(2, 3, 8, 8)
    assert trace(model, (x,)).leaves == ["odd"]
    mm = esper.instrument(model, (x,))
    assert mm.kind == "fx"
    assert {"stem", "body", "tail"} <= {p.id for p in mm.candidates}
    assert torch.equal(mm(x), model(x))


class Hopeless(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1)

    def forward(self, x):
        y = self.conv(x)
        if y.sum() > 0:
            y = y * 2
        return y


def test_nothing_works_names_module_line_and_what_to_try():
    with pytest.raises(esper.TraceError) as info:
        esper.instrument(Hopeless(), (torch.randn(1, 3, 4, 4),))
    text = str(info.value)
    assert "module: (root)" in text
    assert "test_tracing.py" in text and "if y.sum() > 0" in text
    assert "try:" in text and "torch.export" in text


class TrainOnlyNoise(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8))
        self.b = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8))
        self.c = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8))

    def forward(self, x):
        x = self.a(x)
        if self.training:  # fx would bake this branch in
            x = F.dropout(x, 0.5)
        return self.c(self.b(x))


def test_mode_dependent_python_goes_to_hooks_and_keeps_both_modes():
    model = TrainOnlyNoise()
    x = torch.randn(2, 4, 8)
    mm = esper.instrument(model, (x,))
    assert mm.kind == "hooks"
    mm.eval()
    assert torch.equal(mm(x), model.eval()(x))
    mm.train()
    torch.manual_seed(0)
    a = mm(x)
    torch.manual_seed(0)
    assert torch.equal(a, model(x))


def test_cut_points_of_a_plain_chain_are_every_op():
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4))
    result = trace(model, (torch.randn(2, 3, 4),))
    assert cut_points(result.graph, result.input_node) == ["_0", "_1", "_2"]


def test_a_flat_host_places_slots_at_layer_outputs():
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(8 * 16, 4),
    )
    x = torch.randn(2, 3, 4, 4)
    mm = esper.instrument(model, (x,))
    assert len(mm.plane.slots) >= 3
    assert set(mm.plane.slots) <= {str(i) for i in range(6)}
    assert torch.equal(mm(x), model(x))


def test_huggingface_causal_lm_with_a_cache_instruments_through_export():
    from transformers import GPT2Config, GPT2Model

    torch.manual_seed(0)
    model = GPT2Model(GPT2Config(n_embd=32, n_layer=3, n_head=4, vocab_size=50, bos_token_id=0, eos_token_id=0)).eval()
    ids = torch.randint(0, 50, (2, 9))
    with pytest.warns(UserWarning, match="use_cache = False"):
        mm = esper.instrument(model, (ids,))
    assert mm.kind == "hooks" and list(mm.plane.slots) == ["h.0", "h.1", "h.2"]
    assert torch.equal(mm(ids).last_hidden_state, model(ids).last_hidden_state)
