"""A causal host stays causal as it grows: whatever causal-safe seeds germinate, train,
blend or fossilize, and wherever, the grown model's outputs up to position t never depend
on its inputs after t; nor do the exported program's, at any sequence length."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import esper
from esper.kasmina.blending import blend_names
from esper.kasmina.blueprints import blueprints_for
from tests.helpers import TinyGPT

VOCAB = 50
# How many advances take a germinated seed to each stage (FOSSILIZED: to BLENDING, then fossilize).
ADVANCES = {"GERMINATED": 0, "TRAINING": 1, "BLENDING": 2, "FOSSILIZED": 2}


def leaks(model, x: torch.Tensor, seed: int = 0) -> list[int]:
    """The cut points t at which changing every token after t changes some output at or before t."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        before = model(x)
        found = []
        for t in range(x.shape[1] - 1):
            moved = x.clone()
            moved[:, t + 1 :] = (moved[:, t + 1 :] + torch.randint(1, VOCAB, moved[:, t + 1 :].shape, generator=g)) % VOCAB
            if not torch.equal(model(moved)[:, : t + 1], before[:, : t + 1]):
                found.append(t)
    return found


def randomize_seeds(mm) -> None:
    """Seeds start as the identity (their last layer at zero), which is causal whatever they
    are: random weights make every seed compute something that could leak."""
    with torch.no_grad():
        for p in mm.plane.parameters():
            p.normal_(0.0, 0.3)


@st.composite
def grown_causal_models(draw):
    torch.manual_seed(draw(st.integers(0, 2**16)))
    host = TinyGPT(
        vocab=VOCAB, dim=draw(st.sampled_from([16, 32])), depth=draw(st.integers(2, 4)), heads=draw(st.sampled_from([2, 4])), context=16
    )
    x = torch.randint(0, VOCAB, (draw(st.integers(1, 3)), draw(st.integers(2, 12))))
    mm = esper.instrument(host, (x,))
    assert mm.plane.causal
    for slot_id in list(mm.plane.slots):
        stage = draw(st.sampled_from(["DORMANT", *ADVANCES]))
        if stage == "DORMANT":
            continue
        blueprint = draw(st.sampled_from(blueprints_for(mm.plane.slot(slot_id).shape, causal=True)))
        mm.plane.germinate(slot_id, blueprint, draw(st.sampled_from(blend_names(causal=True))), steps=draw(st.integers(1, 3)))
        for _ in range(ADVANCES[stage]):
            mm.plane.advance(slot_id)
        if stage == "FOSSILIZED":
            mm.plane.fossilize(slot_id)
    mm.plane.step(draw(st.integers(0, 3)))  # blends part or all of the way in
    randomize_seeds(mm)
    return mm, x


@settings(max_examples=15)
@given(grown_causal_models(), st.booleans())
def test_a_grown_causal_host_never_sees_the_future(grown, training):
    mm, x = grown
    mm.train(training)
    assert leaks(mm, x) == []


@settings(max_examples=3)
@given(grown_causal_models(), st.integers(2, 16))
def test_the_exported_program_is_causal_at_any_length(tmp_path_factory, grown, length):
    mm, x = grown
    path = esper.export(mm, (x,), tmp_path_factory.mktemp("causal") / "grown.pt2", finalize="fossilize")
    program = torch.export.load(str(path)).module()
    assert leaks(program, torch.randint(0, VOCAB, (2, length))) == []


def test_the_check_sees_a_leak_when_a_seed_is_bidirectional():
    """The property above has teeth: one bidirectional seed, allowed by hand, leaks."""
    torch.manual_seed(0)
    x = torch.randint(0, VOCAB, (2, 8))
    mm = esper.instrument(TinyGPT(vocab=VOCAB, dim=16, depth=2, heads=2, context=16), (x,))
    slot = list(mm.plane.slots)[0]
    mm.plane.germinate(slot, "attention", steps=2, allow_noncausal=True)
    mm.plane.advance(slot), mm.plane.advance(slot)
    mm.plane.step()
    randomize_seeds(mm)
    assert leaks(mm.eval(), x) != []
