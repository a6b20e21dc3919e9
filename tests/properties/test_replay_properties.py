"""Every decision is an edit: random legal edit sequences replay to the same structure,
and illegal edits raise and leave the model untouched."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import esper
from esper.kasmina.blending import blend_names
from esper.kasmina.blueprints import blueprints_for
from esper.leyline import Edit, LifecycleError, Op, edits_from_yaml, edits_to_yaml, legal_ops
from tests.helpers import HostCNN, TinyGPT


def _structure(mm):
    return (
        [(i, s.stage, s.blueprint, s.blend_name, s.ticks_in_stage, round(s.alpha, 6)) for i, s in mm.plane.slots.items()],
        [(n, tuple(p.shape)) for n, p in mm.named_parameters()],
        [(n, tuple(b.shape)) for n, b in mm.named_buffers()],
        mm.code,
    )


@st.composite
def edit_programs(draw):
    """A list of (op index, slot index, blueprint index, blend, ticks after, override) choices;
    override: the edit may grow a seed that is not causal-safe (a logged allow_noncausal)."""
    return draw(
        st.lists(
            st.tuples(
                st.integers(0, 4),
                st.integers(0, 8),
                st.integers(0, 3),
                st.sampled_from(["linear", "sigmoid", "gated"]),
                st.integers(0, 2),
                st.booleans(),
            ),
            min_size=1,
            max_size=25,
        )
    )


def _host(kind):
    torch.manual_seed(0)
    if kind == "cnn":
        return HostCNN(), torch.randn(2, 3, 16, 16)
    return TinyGPT(depth=3), torch.randint(0, 256, (2, 8))


@given(st.sampled_from(["cnn", "gpt"]), edit_programs())
def test_legal_edit_sequences_replay_to_the_same_graph(kind, program):
    host, x = _host(kind)
    mm = esper.instrument(host, (x,))
    for op_i, slot_i, bp_i, blend, ticks, override in program:
        ids = list(mm.plane.slots)
        slot_id = ids[slot_i % len(ids)]
        slot = mm.plane.slots[slot_id]
        legal = legal_ops(slot.stage)
        op = legal[op_i % len(legal)]
        safe_only = mm.plane.causal and not override
        bps = blueprints_for(slot.shape, causal=safe_only)
        if safe_only and blend not in blend_names(causal=True):
            blend = "linear"
        mm.plane.apply(Edit(op, slot_id, bps[bp_i % len(bps)], blend, steps=2, allow_noncausal=override))
        for _ in range(ticks):
            mm.plane.step()
    log = edits_from_yaml(edits_to_yaml(mm.plane.edits))
    assert log == mm.plane.edits
    fresh, x2 = _host(kind)
    again = esper.replay(fresh, (x2,), log, spec=mm.spec, until_step=mm.plane.ticks)
    assert _structure(again) == _structure(mm)
    assert again.plane.edits == mm.plane.edits


@given(st.sampled_from(list(Op)), st.integers(0, 2))
def test_illegal_edits_raise_and_touch_nothing(op, slot_i):
    host, x = _host("cnn")
    mm = esper.instrument(host, (x,))
    slot_id = list(mm.plane.slots)[slot_i]
    mm.plane.germinate(slot_id, "norm", steps=1)
    mm.plane.advance(slot_id), mm.plane.advance(slot_id)
    mm.plane.step()
    mm.plane.fossilize(slot_id)  # now final: every op but WAIT is illegal here
    before = (_structure(mm), {k: v.clone() for k, v in mm.state_dict().items()}, list(mm.plane.edits))
    if op is Op.WAIT:
        mm.plane.apply(Edit(op, slot_id))
        assert mm.plane.edits[-1].op is Op.WAIT
        return
    with pytest.raises(LifecycleError, match=f"slot '{slot_id}' in stage FOSSILIZED cannot {op.name}"):
        mm.plane.apply(Edit(op, slot_id, blueprint="norm"))
    after = (_structure(mm), mm.state_dict(), list(mm.plane.edits))
    assert before[0] == after[0] and before[2] == after[2]
    assert all(torch.equal(before[1][k], after[1][k]) for k in before[1])
