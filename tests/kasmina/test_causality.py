"""Causality: probed at instrumentation, recorded in the spec and the plane, enforced at germination."""

import pytest
import torch
from torch import nn

import esper
from esper.kasmina.causality import probe_causality
from esper.leyline import LifecycleError, SpecError
from tests.helpers import HostCNN, TinyGPT, tiny_bert


class Features(nn.Module):
    """A (B, T, D) -> (B, T, D) host that mixes positions by a running mean, or by the mean
    of the whole sequence, or that leaks only from the next position, and only a little."""

    def __init__(self, mix: str):
        super().__init__()
        self.mix = mix
        self.proj = nn.Linear(8, 8)

    def forward(self, x):
        h = self.proj(x)
        steps = torch.arange(1, x.shape[1] + 1, dtype=x.dtype).view(1, -1, 1)
        if self.mix == "running":
            return h.cumsum(1) / steps
        if self.mix == "whole":
            return h + h.mean(1, keepdim=True)
        return h + 1e-3 * torch.roll(h, -1, dims=1)  # "next": position t reads t + 1 (the last wraps to the first)


def test_the_probe_tells_causal_hosts_from_the_rest():
    torch.manual_seed(0)
    tokens = torch.randint(0, 256, (2, 16))
    assert probe_causality(TinyGPT(), (tokens,))
    assert not probe_causality(tiny_bert()[0], (tiny_bert()[1],))  # bidirectional
    assert not probe_causality(HostCNN(), (torch.randn(2, 3, 32, 32),))  # no sequence axis
    features = torch.randn(2, 10, 8)
    assert probe_causality(Features("running"), (features,))
    assert not probe_causality(Features("whole"), (features,))
    assert not probe_causality(Features("next"), (features,))  # a small leak from one position is a leak
    assert not probe_causality(TinyGPT(), (tokens[:, :1],))  # one position: nothing to tell


def test_the_probe_leaves_the_global_rng_alone():
    host = TinyGPT(context=16)
    torch.manual_seed(3)
    expected = torch.rand(3)
    torch.manual_seed(3)
    assert probe_causality(host, (torch.zeros(2, 16, dtype=torch.long),))
    assert torch.equal(torch.rand(3), expected)


def test_a_huggingface_gpt2_is_causal():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(
        GPT2Config(vocab_size=64, n_positions=16, n_embd=16, n_layer=2, n_head=2, use_cache=False, bos_token_id=0, eos_token_id=0)
    )
    mm = esper.instrument(model, (torch.randint(0, 64, (2, 12)),))
    assert mm.plane.causal and mm.spec["causal"] is True


def test_the_answer_is_in_the_spec_and_the_spec_can_say_it():
    x = torch.randint(0, 256, (2, 16))
    mm = esper.instrument(TinyGPT(), (x,))
    assert mm.plane.causal and mm.spec["causal"] is True
    assert esper.instrument(HostCNN(), (torch.randn(1, 3, 32, 32),)).spec["causal"] is False
    told = esper.instrument(TinyGPT(), (x,), spec={"causal": False})  # taken as given: the user knows better
    assert not told.plane.causal
    again = esper.instrument(TinyGPT(), (x,), spec=mm.spec)
    assert again.plane.causal and [s for s in again.plane.slots] == [s for s in mm.plane.slots]
    with pytest.raises(SpecError, match="'causal' must be true or false"):
        esper.instrument(TinyGPT(), (x,), spec={"causal": "yes"})


def test_a_causal_plane_refuses_what_could_see_the_future_and_names_what_can_grow():
    mm = esper.instrument(TinyGPT(), (torch.randint(0, 256, (2, 16)),))
    slot = list(mm.plane.slots)[0]
    with pytest.raises(LifecycleError, match="blueprint 'attention'.*causal_attention, lora, mlp, norm.*allow_noncausal"):
        mm.plane.germinate(slot, "attention")
    with pytest.raises(LifecycleError, match="blend 'gated'.*blends linear, sigmoid"):
        mm.plane.germinate(slot, "mlp", blend="gated")
    assert mm.plane.edits == [] and mm.plane.slot(slot).seed is None  # nothing happened
    mm.plane.germinate(slot, "causal_attention", blend="sigmoid")
    edit = mm.plane.germinate(list(mm.plane.slots)[1], "attention", allow_noncausal=True)
    assert edit.allow_noncausal and edit.to_dict()["allow_noncausal"] is True
    again = esper.replay(TinyGPT(), (torch.randint(0, 256, (2, 16)),), mm.plane.edits, spec=mm.spec)
    assert [s.blueprint for s in again.plane.slots.values()] == [s.blueprint for s in mm.plane.slots.values()]


def test_a_host_that_is_not_causal_grows_anything():
    bert, ids = tiny_bert()
    mm = esper.instrument(bert, (ids,))
    mm.plane.germinate(list(mm.plane.slots)[0], "attention", blend="gated")
    cnn = esper.instrument(HostCNN(), (torch.randn(1, 3, 32, 32),))
    cnn.plane.germinate("block1", "conv_enhance", blend="gated")
