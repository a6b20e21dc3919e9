"""Observation building: sizes, finiteness, masks from the transition table, scales."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from esper.leyline import (
    GLOBAL_FEATURES,
    MAX_BLUEPRINTS,
    NUM_GLOBAL_FEATURES,
    NUM_SLOT_FEATURES,
    Edit,
    Op,
    SeedStage,
    SlotTelemetry,
    Vocabulary,
    legal_ops,
)
from esper.simic.features import TrainingSignals, build_observation
from esper.tamiyo import HeuristicConfig, HeuristicPolicy

BLUEPRINTS = ["noop", "conv", "attention", "lora"]
RANKS = {"noop": {2, 3, 4}, "conv": {4}, "attention": {3, 4}, "lora": {3}}
BLENDS = ["linear", "sigmoid"]
SHAPES = {2: (8, 64), 3: (8, 16, 64), 4: (8, 32, 16, 16), 5: (8, 4, 8, 8, 8)}


def signals(**overrides) -> TrainingSignals:
    values = dict(
        decision=5, total_decisions=20, train_loss=1.0, train_acc=0.6, val_loss=1.1, val_acc=0.55,
        host_params=100_000, total_params=100_000,
    )  # fmt: skip
    values.update(overrides)
    return TrainingSignals(**values)


def slot(name: str, stage: SeedStage, rank: int = 4, **kwargs) -> SlotTelemetry:
    fields = dict(ticks_in_stage=0, alpha=0.0, params=0)
    fields.update(kwargs)
    return SlotTelemetry(name, stage.name, SHAPES[rank], **fields)


def fitting(shape):
    return {b for b in BLUEPRINTS if len(shape) in RANKS[b]}


def observe(telemetry, sig=None, contributions=None):
    return build_observation(telemetry, sig or signals(), contributions or {}, BLUEPRINTS, fitting, BLENDS)


maybe = st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True, width=32))


@st.composite
def telemetries(draw):
    n = draw(st.integers(1, 8))
    out = []
    for i in range(n):
        stage = draw(st.sampled_from(list(SeedStage)))
        has_seed = stage not in (SeedStage.DORMANT, SeedStage.CULLED)
        out.append(
            SlotTelemetry(
                f"s{i}",
                stage.name,
                SHAPES[draw(st.sampled_from([2, 3, 4, 5]))],
                ticks_in_stage=draw(st.integers(0, 10_000)),
                alpha=draw(st.floats(allow_nan=True, allow_infinity=True)),
                params=draw(st.integers(0, 10**9)),
                blueprint=draw(st.sampled_from(BLUEPRINTS)) if has_seed else None,
                blend=draw(st.sampled_from(BLENDS)) if has_seed else None,
                input_mean=draw(maybe),
                input_std=draw(maybe),
                grad_norm=draw(maybe),
                seed_grad_norm=draw(maybe),
            )
        )
    return out


@given(
    telemetries(),
    st.lists(st.floats(0, 1), max_size=6),
    st.lists(st.floats(allow_nan=True, allow_infinity=True), max_size=6),
    st.one_of(st.floats(0, 1), st.just(math.nan)),
    st.floats(allow_nan=True, allow_infinity=True),
    st.dictionaries(st.sampled_from([f"s{i}" for i in range(8)]), st.floats(allow_nan=True, allow_infinity=True)),
)
def test_observation_is_finite_bounded_and_sized_for_any_slot_count(telemetry, accs, losses, val_acc, loss, contrib):
    sig = signals(
        val_acc=val_acc, val_loss=loss, train_loss=loss, total_params=10**7,
        val_acc_history=accs, train_acc_history=accs, val_loss_history=losses, train_loss_history=losses,
    )  # fmt: skip
    obs = observe(telemetry, sig, contrib)
    n = len(telemetry)
    assert obs.global_features.shape == (NUM_GLOBAL_FEATURES,)
    assert obs.slot_features.shape == (n, NUM_SLOT_FEATURES)
    for features in (obs.global_features, obs.slot_features):
        assert torch.isfinite(features).all() and (features.abs() <= 3).all()
    assert obs.op_mask.any(-1).all() and obs.blueprint_mask.any(-1).all() and obs.blend_mask.any()
    for i, t in enumerate(telemetry):
        rank = len(t.shape)
        applicable = [rank in RANKS[b] for b in BLUEPRINTS]
        legal = set(legal_ops(SeedStage[t.stage]))
        if not any(applicable):
            legal.discard(Op.GERMINATE)
            assert obs.blueprint_mask[i].tolist() == [True] + [False] * (MAX_BLUEPRINTS - 1)
        else:
            assert obs.blueprint_mask[i].tolist() == applicable + [False] * (MAX_BLUEPRINTS - len(BLUEPRINTS))
        assert {Op(j) for j in obs.op_mask[i].nonzero().flatten().tolist()} == legal
        assert obs.stages()[i] is SeedStage[t.stage]


def test_global_features_values():
    sig = signals(
        decision=5, total_decisions=20, val_acc=0.72, val_acc_history=[0.50, 0.60, 0.70],
        val_loss=0.8, val_loss_history=[1.0, 1.0, 1.0], total_params=110_000,
    )  # fmt: skip
    stages = [SeedStage.DORMANT, SeedStage.TRAINING, SeedStage.FOSSILIZED, SeedStage.DORMANT]
    obs = observe([slot(f"s{i}", s) for i, s in enumerate(stages)], sig)
    f = {name: obs.global_feature(name) for name in GLOBAL_FEATURES}
    assert f["progress"] == pytest.approx(0.25)
    assert f["val_acc_delta_1"] == pytest.approx(0.2)  # +2 points
    assert f["val_acc_delta_3"] == pytest.approx(2.2)  # +22 points
    assert f["val_loss_delta_1"] == pytest.approx(-0.2)  # relative
    assert f["delta_1_known"] == f["delta_3_known"] == 1.0
    assert f["train_acc_delta_1"] == 0.0  # no train history given
    assert f["param_ratio"] == pytest.approx(math.log1p(10) / math.log1p(100))
    assert (f["active_fraction"], f["fossilized_fraction"], f["dormant_fraction"]) == (0.25, 0.25, 0.5)

    short = observe([slot("a", SeedStage.DORMANT)], signals(val_acc_history=[0.5]))
    assert short.global_feature("delta_1_known") == 1.0 and short.global_feature("delta_3_known") == 0.0
    assert short.global_feature("val_acc_delta_3") == 0.0
    diverged = observe([slot("a", SeedStage.DORMANT)], signals(val_loss=math.nan))
    assert diverged.global_feature("val_loss") == 3.0  # reads as the worst loss, not as unknown


def test_slot_features_values():
    telemetry = [
        slot("early", SeedStage.DORMANT),
        slot(
            "late", SeedStage.BLENDING, rank=3, ticks_in_stage=5, alpha=0.5, params=1_000,
            blueprint="lora", blend="sigmoid", input_mean=-1.0, input_std=2.0, grad_norm=1.0, seed_grad_norm=10.0,
        ),
    ]  # fmt: skip
    obs = observe(telemetry, contributions={"late": 0.03})

    def col(name):
        return obs.slot_feature(name).tolist()

    assert col("stage_dormant") == [1, 0] and col("stage_blending") == [0, 1]
    assert col("position") == [0, 1]
    assert col("rank_4") == [1, 0] and col("rank_3") == [0, 1]
    assert col("ticks_in_stage")[1] == pytest.approx(0.5)
    assert col("alpha")[1] == 0.5
    assert col("contribution") == pytest.approx([0, 0.3]) and col("contribution_known") == [0, 1]
    assert col("grad_ratio")[1] == pytest.approx(1 / 3) and col("grad_known") == [0, 1]
    assert col("input_mean")[1] == pytest.approx(-math.log(2)) and col("input_stats_known") == [0, 1]
    assert col("blueprint_3") == [0, 1] and sum(col("blueprint_0")) == 0
    assert col("blend_1") == [0, 1]
    assert col("param_ratio")[1] == pytest.approx(math.log1p(1) / math.log1p(100))


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="fractions"):
        signals(val_acc=65.0)
    with pytest.raises(ValueError, match="not in"):
        observe([slot("a", SeedStage.TRAINING, blueprint="mystery")])
    with pytest.raises(ValueError, match="no seed slots"):
        observe([])


def test_heuristic_reads_built_observations():
    """The feature scales and the heuristic's decoding agree."""
    heuristic = HeuristicPolicy(
        Vocabulary(BLUEPRINTS, BLENDS, 5),
        HeuristicConfig(blueprint_preference=["conv"], plateau=0.005, train_epochs=3, germinate_at="first"),
    )
    plateau = signals(val_acc=0.601, val_acc_history=[0.600, 0.600, 0.600])
    improving = signals(val_acc=0.65, val_acc_history=[0.5, 0.55, 0.6])
    dormant = [slot("a", SeedStage.DORMANT), slot("b", SeedStage.DORMANT)]
    assert heuristic.decide([observe(dormant, improving)]) == [Edit(Op.WAIT)]
    assert heuristic.decide([observe(dormant, plateau)]) == [Edit(Op.GERMINATE, "a", blueprint="conv", blend="linear", steps=5)]
    ready = [slot("a", SeedStage.TRAINING, ticks_in_stage=3, blueprint="conv", blend="linear")]
    assert heuristic.decide([observe(ready, improving)]) == [Edit(Op.ADVANCE, "a")]
    blended = [slot("a", SeedStage.BLENDING, ticks_in_stage=5, alpha=1.0, blueprint="conv", blend="linear")]
    assert heuristic.decide([observe(blended, improving, {"a": 0.01})]) == [Edit(Op.FOSSILIZE, "a")]
    assert heuristic.decide([observe(blended, improving, {"a": -0.03})]) == [Edit(Op.CULL, "a")]  # beyond the tolerance
