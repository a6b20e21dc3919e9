"""Observation building: sizes, finiteness, masks from the transition table, scales."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from esper.kasmina.blueprints import blueprint_profile, blueprints_for
from esper.leyline import (
    BLUEPRINT_FEATURES,
    GLOBAL_FEATURES,
    MAX_BLUEPRINTS,
    NUM_BLUEPRINT_FEATURES,
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
from esper.simic.flops import HostProfile
from esper.tamiyo import HeuristicConfig, HeuristicPolicy

BLUEPRINTS = ["norm", "conv_enhance", "attention", "lora"]
BLENDS = ["linear", "sigmoid"]
SHAPES = {2: (8, 64), 3: (8, 16, 64), 4: (8, 32, 16, 16), 5: (8, 4, 8, 8, 8)}  # nothing grows at ranks 2 and 5


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
    return set(blueprints_for(shape)) & set(BLUEPRINTS)


def observe(telemetry, sig=None, contributions=None, profile=None):
    return build_observation(telemetry, sig or signals(), contributions or {}, BLUEPRINTS, fitting, BLENDS, profile=profile)


maybe = st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True, width=32))


@st.composite
def telemetries(draw):
    n = draw(st.integers(1, 8))
    out = []
    for i in range(n):
        stage = draw(st.sampled_from(list(SeedStage)))
        has_seed = stage not in (SeedStage.DORMANT, SeedStage.CULLED)
        shape = SHAPES[draw(st.sampled_from([3, 4] if has_seed else [2, 3, 4, 5]))]
        out.append(
            SlotTelemetry(
                f"s{i}",
                stage.name,
                shape,
                ticks_in_stage=draw(st.integers(0, 10_000)),
                alpha=draw(st.floats(allow_nan=True, allow_infinity=True)),
                params=draw(st.integers(0, 10**9)),
                blueprint=draw(st.sampled_from(sorted(fitting(shape)))) if has_seed else None,
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
    st.sampled_from([None, 2, 10, 50_000]),
    st.floats(0, 5),
    st.integers(1, 4),
)
def test_observation_is_finite_bounded_and_sized_for_any_slot_count(
    telemetry, accs, losses, val_acc, loss, contrib, classes, budget, per_epoch
):
    sig = signals(
        val_acc=val_acc, val_loss=loss, train_loss=loss, total_params=10**7, classes=classes, param_budget=budget,
        decisions_per_epoch=per_epoch,
        val_acc_history=accs, train_acc_history=accs, val_loss_history=losses, train_loss_history=losses,
    )  # fmt: skip
    obs = observe(telemetry, sig, contrib)
    n = len(telemetry)
    assert obs.global_features.shape == (NUM_GLOBAL_FEATURES,)
    assert obs.slot_features.shape == (n, NUM_SLOT_FEATURES)
    assert obs.blueprint_features.shape == (n, MAX_BLUEPRINTS, NUM_BLUEPRINT_FEATURES)
    for features in (obs.global_features, obs.slot_features, obs.blueprint_features):
        assert torch.isfinite(features).all() and (features.abs() <= 3).all()
    assert (obs.blueprint_features[~obs.blueprint_mask] == 0).all()
    assert obs.op_mask.any(-1).all() and obs.blueprint_mask.any(-1).all() and obs.blend_mask.any()
    for i, t in enumerate(telemetry):
        applicable = [b in fitting(t.shape) for b in BLUEPRINTS]
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
    assert f["classes_known"] == 0.0 and f["val_acc"] == 0.0  # chance unknown: no accuracy against it
    assert f["epochs_left"] == pytest.approx(1.5)  # 15 decisions of one epoch each, / EPOCH_SCALE
    assert f["budget"] == 0.0 and f["budget_left"] == pytest.approx(-0.1)

    ten = {
        name: observe([slot("a", SeedStage.DORMANT)], signals(**{**vars(sig), "classes": 10})).global_feature(name)
        for name in GLOBAL_FEATURES
    }
    assert ten["classes_known"] == 1.0
    assert ten["val_acc"] == pytest.approx((0.72 - 0.1) / 0.9)  # against chance
    assert ten["val_loss"] == pytest.approx(0.8 / math.log(10))

    # Per epoch: with two decisions an epoch, the change since two decisions ago.
    halves = signals(val_acc=0.72, val_acc_history=[0.50, 0.60, 0.70], decisions_per_epoch=2, total_decisions=20, decision=6)
    g = observe([slot("a", SeedStage.DORMANT)], halves)
    assert g.global_feature("val_acc_per_epoch") == pytest.approx(1.2) and g.global_feature("epoch_known") == 1.0
    assert g.global_feature("epochs_left") == pytest.approx(0.7)

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
    assert col("depth") == [0, 1]  # no host profile: by index
    assert col("rank_4") == [1, 0] and col("rank_3") == [0, 1]
    assert col("ticks_in_stage")[1] == pytest.approx(0.5)
    assert col("alpha")[1] == 0.5
    assert col("contribution") == pytest.approx([0, 0.3]) and col("contribution_known") == [0, 1]
    assert col("grad_ratio")[1] == pytest.approx(1 / 3) and col("grad_known") == [0, 1]
    assert col("seed_channel_mixing") == [0, 1] and col("seed_spatial_mixing") == [0, 0]  # lora: low-rank linear
    assert col("blend_1") == [0, 1]
    assert col("extent") == pytest.approx([math.log2(256) / 10, math.log2(16) / 10])
    assert col("param_ratio")[1] == pytest.approx(math.log1p(1) / math.log1p(100))


def test_blueprint_features_say_what_a_candidate_adds_and_whether_it_fits_the_budget():
    telemetry = [slot("a", SeedStage.DORMANT), slot("b", SeedStage.DORMANT, rank=3)]
    host = HostProfile(flops=10**7, depth={"a": 0.2, "b": 0.9})
    sig = signals(host_params=10_000, total_params=10_000, param_budget=0.2)
    obs = observe(telemetry, sig, profile=host)
    assert obs.slot_feature("depth").tolist() == pytest.approx([0.2, 0.9])

    def row(slot_index, name):
        return dict(zip(BLUEPRINT_FEATURES, obs.blueprint_features[slot_index, BLUEPRINTS.index(name)].tolist()))

    conv = blueprint_profile("conv_enhance", SHAPES[4])
    r = row(0, "conv_enhance")
    assert r["param_ratio"] == pytest.approx(math.log1p(100 * conv.params / 10_000) / math.log1p(100))
    assert r["flop_ratio"] == pytest.approx(math.log1p(100 * conv.flops / 10**7) / math.log1p(100), rel=1e-5)
    assert r["fits_budget"] == float(conv.params / 10_000 <= 0.2)
    assert r["spatial_mixing"] == 1.0 and r["global_mixing"] == 0.0
    assert row(0, "attention")["global_mixing"] == 1.0 and row(0, "norm")["normalizes"] == 1.0
    assert row(0, "norm")["fits_budget"] == 1.0 and row(0, "norm")["budget_use"] < 0.1
    assert row(1, "lora")["spatial_mixing"] == 0.0 and (obs.blueprint_features[1, BLUEPRINTS.index("conv_enhance")] == 0).all()

    spent = observe(telemetry, signals(host_params=10_000, total_params=12_000, param_budget=0.2), profile=host)
    norm = dict(zip(BLUEPRINT_FEATURES, spent.blueprint_features[0, BLUEPRINTS.index("norm")].tolist()))
    assert norm["fits_budget"] == 0.0 and norm["budget_use"] == 3.0  # nothing left


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="fractions"):
        signals(val_acc=65.0)
    with pytest.raises(KeyError, match="unknown blueprint"):
        observe([slot("a", SeedStage.TRAINING, blueprint="mystery")])
    with pytest.raises(ValueError, match="at least 2 classes"):
        signals(classes=1)
    with pytest.raises(ValueError, match="no seed slots"):
        observe([])


def test_heuristic_reads_built_observations():
    """The feature scales and the heuristic's decoding agree."""
    heuristic = HeuristicPolicy(
        Vocabulary(BLUEPRINTS, BLENDS, 5),
        HeuristicConfig(blueprint_preference=["conv_enhance"], plateau=0.005, train_epochs=3, germinate_at="first"),
    )
    plateau = signals(val_acc=0.601, val_acc_history=[0.600, 0.600, 0.600])
    improving = signals(val_acc=0.65, val_acc_history=[0.5, 0.55, 0.6])
    dormant = [slot("a", SeedStage.DORMANT), slot("b", SeedStage.DORMANT)]
    assert heuristic.decide([observe(dormant, improving)]) == [Edit(Op.WAIT)]
    assert heuristic.decide([observe(dormant, plateau)]) == [Edit(Op.GERMINATE, "a", blueprint="conv_enhance", blend="linear", steps=5)]
    ready = [slot("a", SeedStage.TRAINING, ticks_in_stage=3, blueprint="conv_enhance", blend="linear")]
    assert heuristic.decide([observe(ready, improving)]) == [Edit(Op.ADVANCE, "a")]
    blended = [slot("a", SeedStage.BLENDING, ticks_in_stage=5, alpha=1.0, blueprint="conv_enhance", blend="linear")]
    assert heuristic.decide([observe(blended, improving, {"a": 0.01})]) == [Edit(Op.FOSSILIZE, "a")]
    assert heuristic.decide([observe(blended, improving, {"a": -0.03})]) == [Edit(Op.CULL, "a")]  # beyond the tolerance
