"""Random sequences of lifecycle moves never leave the transition table; illegal ones raise."""

import copy

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import esper
from esper.leyline import TRANSITIONS, Edit, LifecycleError, Op, SeedStage, check_move, legal_ops, target_stage
from tests.helpers import HostCNN

OPS = [Op.GERMINATE, Op.ADVANCE, Op.CULL, Op.FOSSILIZE, Op.WAIT]

S = SeedStage
# The lifecycle as docs/how-it-works.md draws it, written out here so that the table in
# esper/leyline/stages.py is checked against it rather than against itself:
#   DORMANT -> GERMINATED -> TRAINING -> BLENDING -> FOSSILIZED (final)
#   GERMINATED, TRAINING, BLENDING -> CULLED -> DORMANT
DOCUMENTED = {
    S.DORMANT: {S.GERMINATED},
    S.GERMINATED: {S.TRAINING, S.CULLED},
    S.TRAINING: {S.BLENDING, S.CULLED},
    S.BLENDING: {S.FOSSILIZED, S.CULLED},
    S.FOSSILIZED: set(),
    S.CULLED: {S.DORMANT},
}
# What a policy may do in each stage: WAIT always; ADVANCE along the chain; FOSSILIZE only from BLENDING.
DOCUMENTED_OPS = {
    S.DORMANT: {Op.WAIT, Op.GERMINATE},
    S.GERMINATED: {Op.WAIT, Op.ADVANCE, Op.CULL},
    S.TRAINING: {Op.WAIT, Op.ADVANCE, Op.CULL},
    S.BLENDING: {Op.WAIT, Op.ADVANCE, Op.CULL, Op.FOSSILIZE},
    S.FOSSILIZED: {Op.WAIT},
    S.CULLED: {Op.WAIT},
}


def test_the_table_is_the_documented_lifecycle():
    assert {src: set(dst) for src, dst in TRANSITIONS.items()} == DOCUMENTED
    assert {stage: set(legal_ops(stage)) for stage in SeedStage} == DOCUMENTED_OPS


@given(st.lists(st.tuples(st.sampled_from(list(SeedStage)), st.sampled_from(list(SeedStage))), max_size=50))
def test_check_move_is_exactly_the_table(moves):
    for src, dst in moves:
        if dst in DOCUMENTED[src]:
            check_move("s", src, dst)
        else:
            with pytest.raises(LifecycleError) as info:
                check_move("s", src, dst)
            assert info.value.slot == "s" and info.value.stage is src


@given(st.sampled_from(list(SeedStage)), st.sampled_from(OPS))
def test_legal_ops_agree_with_target_stage(stage, op):
    if op in legal_ops(stage):
        dst = target_stage("s", stage, op)
        assert dst is None or dst in DOCUMENTED[stage]
    else:
        with pytest.raises(LifecycleError, match=f"slot 's' in stage {stage.name} cannot {op.name}"):
            target_stage("s", stage, op)


@given(
    st.lists(
        st.tuples(
            st.sampled_from(OPS + ["tick"]),
            st.integers(0, 2),
            st.sampled_from(["conv_enhance", "attention", "norm", "depthwise"]),
            st.sampled_from(["linear", "sigmoid", "gated"]),
        ),
        max_size=30,
    )
)
def test_random_move_sequences_on_a_plane(moves):
    mm = esper.instrument(HostCNN(), (torch.randn(2, 3, 16, 16),))
    ids = list(mm.plane.slots)
    x = torch.randn(2, 3, 16, 16)
    for op, i, blueprint, blend in moves:
        if op == "tick":
            mm.plane.step()
            continue
        slot = mm.plane.slots[ids[i]]
        before = slot.stage
        edit = Edit(op, ids[i], blueprint, blend, steps=2)
        n_edits = len(mm.plane.edits)
        if op in DOCUMENTED_OPS[before]:
            mm.plane.apply(edit)
            assert slot.stage is before if op is Op.WAIT else slot.stage in DOCUMENTED[before]
            assert len(mm.plane.edits) == n_edits + 1
        else:
            with pytest.raises(LifecycleError) as info:
                mm.plane.apply(edit)
            assert ids[i] in str(info.value) and before.name in str(info.value)
            assert slot.stage is before and len(mm.plane.edits) == n_edits
        for s in mm.plane.slots.values():
            assert (s.seed is None) == (s.stage in (SeedStage.DORMANT, SeedStage.CULLED))
    mm.train()
    out = mm(x)
    assert out.shape == (2, 10) and torch.isfinite(out).all()


@given(st.lists(st.tuples(st.sampled_from(OPS), st.integers(0, 1), st.integers(0, 4)), max_size=12), st.integers(0, 3))
def test_many_ticks_at_once_are_that_many_single_ticks(moves, cooldown):
    bulk = esper.instrument(HostCNN(), (torch.randn(1, 3, 8, 8),))
    for slot in bulk.plane.slots.values():
        slot.cooldown = cooldown
    single = copy.deepcopy(bulk)
    ids = list(bulk.plane.slots)

    def state(m):
        return [(s.stage, s.ticks_in_stage, s.alpha) for s in m.plane.slots.values()], m.plane.ticks

    for op, i, ticks in moves:
        for m in (bulk, single):
            if op in legal_ops(m.plane.slots[ids[i]].stage):
                m.plane.apply(Edit(op, ids[i], "norm", steps=3))
        bulk.plane.step(ticks)
        for _ in range(ticks):
            single.plane.step()
        assert state(bulk) == state(single)


@pytest.mark.parametrize("cooldown", [1, 3])
@pytest.mark.parametrize("bulk", [True, False])
def test_a_culled_slot_rests_its_cooldown_then_is_dormant_afresh(cooldown, bulk):
    mm = esper.instrument(HostCNN(), (torch.randn(1, 3, 8, 8),))
    slot = mm.plane.slots["block1"]
    slot.cooldown = cooldown
    mm.plane.germinate("block1", "norm")
    mm.plane.cull("block1")

    def tick(n):
        if bulk:
            mm.plane.step(n)
        else:
            for _ in range(n):
                mm.plane.step()

    tick(cooldown - 1)
    assert (slot.stage, slot.ticks_in_stage) == (SeedStage.CULLED, cooldown - 1)
    tick(3)
    assert (slot.stage, slot.ticks_in_stage) == (SeedStage.DORMANT, 2)
    with pytest.raises(ValueError, match="backwards"):
        mm.plane.step(-1)
