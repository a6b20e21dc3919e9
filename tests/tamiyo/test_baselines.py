"""The heuristic and random policies, and behaviour cloning from the heuristic."""

from __future__ import annotations

import copy
import random

import pytest
import torch

from esper.leyline import BLUEPRINT_FEATURES, Edit, Op, SeedStage
from esper.tamiyo import (
    Action,
    HeuristicConfig,
    HeuristicPolicy,
    RandomPolicy,
    TamiyoPolicy,
    agreement,
    behaviour_clone,
    fit_value,
)
from esper.tamiyo.imitation import ImitationConfig
from tests.tamiyo.factory import STEPS, VOCAB, make_observation

S = SeedStage
PLATEAU = {"delta_3_known": 1.0, "val_acc_delta_3": 0.02, "progress": 0.3}  # +0.2 points in 3 epochs
IMPROVING = {**PLATEAU, "val_acc_delta_3": 0.5}  # +5 points


def blending(alpha: float, contribution: float, known: float = 1.0) -> dict:
    return {"alpha": [alpha], "contribution": [contribution * 10], "contribution_known": [known]}


# Rules tuned for epochs rather than short episodes: a real plateau, three epochs of
# training, the earliest free slot (HeuristicConfig's defaults are for 8-tick episodes).
EPOCH_RULES = dict(blueprint_preference=[], plateau=0.005, train_epochs=3, latest_germination=0.75, decline=0.01, germinate_at="first")


def heuristic(**kwargs) -> HeuristicPolicy:
    return HeuristicPolicy(VOCAB, HeuristicConfig(**{**EPOCH_RULES, **kwargs}))


def choose(policy: HeuristicPolicy, obs) -> Action:
    return policy.choose([obs])[0]


def test_heuristic_germinates_on_a_plateau_in_the_earliest_free_slot():
    obs = make_observation([S.FOSSILIZED, S.DORMANT, S.DORMANT], ranks=[4, 2, 4], globals_=PLATEAU)
    # Slot 1 (rank 2) only takes "noop"; the preferred "conv" needs rank 4.
    assert choose(heuristic(blueprint_preference=["conv"]), obs) == Action(Op.GERMINATE, 1, 0, 0)
    obs = make_observation([S.FOSSILIZED, S.DORMANT, S.DORMANT], ranks=[4, 4, 4], globals_=PLATEAU)
    edit = heuristic(blueprint_preference=["conv"]).decide([obs])[0]
    assert edit == Edit(Op.GERMINATE, "s1", blueprint="conv", blend="linear", steps=STEPS)


@pytest.mark.parametrize(
    "stages, globals_",
    [
        ([S.DORMANT, S.DORMANT], IMPROVING),  # still improving
        ([S.DORMANT, S.DORMANT], {**PLATEAU, "delta_3_known": 0.0}),  # too early to tell
        ([S.DORMANT, S.DORMANT], {**PLATEAU, "progress": 0.9}),  # too late to blend a seed in
        ([S.DORMANT, S.BLENDING], PLATEAU),  # a seed is already live
    ],
)
def test_heuristic_waits_otherwise(stages, globals_):
    slots = {"contribution_known": [0.0] * len(stages)}
    assert choose(heuristic(), make_observation(stages, globals_=globals_, slots=slots)) == Action(Op.WAIT)


def test_heuristic_advances_through_training():
    assert choose(heuristic(), make_observation([S.GERMINATED], globals_=IMPROVING)) == Action(Op.ADVANCE, 0)
    early = make_observation([S.TRAINING], globals_=IMPROVING, slots={"ticks_in_stage": [0.1]})
    assert choose(heuristic(train_epochs=3), early) == Action(Op.WAIT)
    ready = make_observation([S.TRAINING], globals_=IMPROVING, slots={"ticks_in_stage": [0.3]})
    assert choose(heuristic(train_epochs=3), ready) == Action(Op.ADVANCE, 0)


def test_heuristic_fossilizes_helpers_and_culls_the_rest():
    def at(alpha, contribution, known=1.0):
        return make_observation([S.BLENDING], globals_=IMPROVING, slots=blending(alpha, contribution, known))

    assert choose(heuristic(), at(1.0, 0.02)) == Action(Op.FOSSILIZE, 0)
    assert choose(heuristic(), at(1.0, -0.03)) == Action(Op.CULL, 0)  # beyond the default 2-point tolerance
    assert choose(heuristic(), at(1.0, 0.02, known=0.0)) == Action(Op.WAIT)  # not measured yet

    policy = heuristic(decline=0.01)
    assert choose(policy, at(0.4, 0.03)) == Action(Op.WAIT)
    assert choose(policy, at(0.6, 0.025)) == Action(Op.WAIT)  # within tolerance of its best
    assert choose(policy, at(0.8, 0.01)) == Action(Op.CULL, 0)  # 2 points below its best


def test_random_policy_is_uniform_over_legal_ops_and_seeded():
    obs = make_observation([S.DORMANT, S.TRAINING])  # WAIT, GERMINATE, ADVANCE, CULL
    actions = RandomPolicy(VOCAB, seed=0).choose([obs] * 4000)
    counts = torch.bincount(torch.tensor([a.op for a in actions]), minlength=5)
    assert counts[Op.FOSSILIZE] == 0
    assert ((counts[:4] / 4000 - 0.25).abs() < 0.03).all(), counts
    again = RandomPolicy(VOCAB, seed=0).choose([obs] * 4000)
    assert actions == again


def _teacher_pairs(count: int) -> tuple[list, list[Action]]:
    """`count` random observations (1 to 5 slots of random ranks, every stage) and the
    heuristic's actions on them."""
    rng = random.Random(0)
    observations = []
    for i in range(count):
        n = rng.randint(1, 5)
        stages = [rng.choice(list(S)) for _ in range(n)]
        globals_ = {
            "delta_3_known": float(rng.random() < 0.8),
            "val_acc_delta_3": rng.uniform(-0.2, 0.3),
            "progress": rng.random(),
        }
        slots = {"alpha": [rng.choice([0.5, 1.0]) for _ in range(n)], "contribution_known": [1.0] * n}
        ranks = [rng.choice([2, 3, 4]) for _ in range(n)]
        observations.append(make_observation(stages, ranks, seed=i, globals_=globals_, slots=slots))
    # One environment per observation, so the heuristic's memory never links two of them.
    # The preference makes the blueprint depend on the slot: lora at rank 3, attention at 4.
    return observations, heuristic(blueprint_preference=["lora", "attention"]).choose(observations)


def test_behaviour_cloning_trains_until_it_agrees_with_the_heuristic():
    observations, actions = _teacher_pairs(500)
    assert len({a.op for a in actions}) == 5  # every op is demonstrated
    assert len({a.blueprint for a in actions if a.op == Op.GERMINATE}) == 3  # noop, attention, lora

    torch.manual_seed(0)
    policy = TamiyoPolicy(VOCAB, hidden=64)
    before = agreement(policy, observations, actions)
    critic = copy.deepcopy(policy.critic.state_dict())
    cfg = ImitationConfig()
    result = behaviour_clone(policy, observations, actions, cfg)
    assert result.agreement >= cfg.target_agreement > before, (before, result)
    assert result.agreement == agreement(policy, observations, actions)
    assert result.epochs == len(result.losses) < cfg.max_epochs and result.epochs % cfg.check_every == 0
    assert result.losses[-1] < result.losses[0] / 3
    assert all(torch.equal(v, critic[k]) for k, v in policy.critic.state_dict().items())  # the actor only

    # Stops at max_epochs when the target is out of reach.
    capped = behaviour_clone(TamiyoPolicy(VOCAB, hidden=16), observations[:64], actions[:64], ImitationConfig(max_epochs=3))
    assert capped.epochs == len(capped.losses) == 3


def test_fit_value_fits_the_critic_and_leaves_the_actor():
    observations, _ = _teacher_pairs(128)
    returns = [o.global_feature("progress") * 2 - 1 for o in observations]  # something the critic can see
    torch.manual_seed(0)
    policy = TamiyoPolicy(VOCAB, hidden=32)
    actor = [p.detach().clone() for p in policy.actor_parameters()]
    losses, ev = fit_value(policy, observations, returns, 30, ImitationConfig(learning_rate=3e-3))
    assert len(losses) == 30 and losses[-1] < losses[0] / 3
    assert ev > 0.5
    assert all(torch.equal(p, q) for p, q in zip(policy.actor_parameters(), actor))


def test_behaviour_cloning_rejects_illegal_teacher_actions():
    policy = TamiyoPolicy(VOCAB, hidden=16)
    with pytest.raises(ValueError, match="illegal"):
        behaviour_clone(policy, [make_observation([S.DORMANT])], [Action(Op.FOSSILIZE, 0)])


def test_heuristic_tolerance_keeps_seeds_that_are_not_clearly_harmful():
    def at(contribution):
        return make_observation([S.BLENDING], globals_=IMPROVING, slots=blending(1.0, contribution))

    assert choose(heuristic(tolerance=0.0), at(0.0)) == Action(Op.CULL, 0)  # without tolerance, no help is no seed
    lenient = heuristic(tolerance=0.02)
    assert choose(lenient, at(0.0)) == Action(Op.FOSSILIZE, 0)
    assert choose(lenient, at(-0.03)) == Action(Op.CULL, 0)  # beyond the tolerance, harm is culled
    assert choose(lenient, at(-0.01)) == Action(Op.FOSSILIZE, 0)
    assert choose(lenient, at(-0.03)) == Action(Op.CULL, 0)


def test_heuristic_culls_a_blending_seed_while_the_training_loss_rises():
    def at(loss_delta, known=1.0):
        globals_ = {**IMPROVING, "delta_1_known": known, "train_loss_delta_1": loss_delta}
        return make_observation([S.BLENDING], globals_=globals_, slots=blending(0.5, 0.03))

    assert choose(heuristic(), at(0.10)) == Action(Op.CULL, 0)  # +10% loss while it blends in
    assert choose(heuristic(), at(0.01)) == Action(Op.WAIT)  # within loss_rise: noise
    assert choose(heuristic(), at(-0.05)) == Action(Op.WAIT)  # the loss falls, as a host's does
    assert choose(heuristic(), at(0.10, known=0.0)) == Action(Op.WAIT)  # no earlier interval to compare with
    assert choose(heuristic(loss_rise=0.2), at(0.10)) == Action(Op.WAIT)


def test_the_default_heuristic_grows_from_the_first_decision():
    first = make_observation([S.DORMANT, S.DORMANT], ranks=[4, 4], globals_={"progress": 0.0})
    assert choose(HeuristicPolicy(VOCAB), first).op is Op.GERMINATE
    later = HeuristicPolicy(VOCAB, HeuristicConfig(earliest_germination=0.25))
    assert choose(later, first) == Action(Op.WAIT)
    assert choose(later, make_observation([S.DORMANT, S.DORMANT], ranks=[4, 4], globals_={"progress": 0.25})).op is Op.GERMINATE
    with pytest.raises(ValueError, match="earliest_germination"):
        HeuristicConfig(earliest_germination=0.6, latest_germination=0.5)


def test_the_budget_rule_grows_the_largest_blueprint_that_fits_what_is_left():
    obs = make_observation([S.DORMANT], ranks=[4], globals_=PLATEAU)
    params, fits = (BLUEPRINT_FEATURES.index(name) for name in ("param_ratio", "fits_budget"))
    # Slot 0 accepts noop, conv and attention (rank 4): conv is the largest, attention the largest that fits.
    obs.blueprint_features[0, :3, params] = torch.tensor([-3.0, 0.5, -1.0])
    obs.blueprint_features[0, :3, fits] = torch.tensor([1.0, 0.0, 1.0])
    assert choose(heuristic(blueprint_by="budget"), obs).blueprint == VOCAB.blueprints.index("attention")
    assert choose(heuristic(blueprint_by="preference"), obs).blueprint == VOCAB.blueprints.index("noop")
    obs.blueprint_features[0, :3, fits] = 0.0  # nothing fits (no budget): the preference decides
    assert choose(heuristic(blueprint_by="budget", blueprint_preference=["conv"]), obs).blueprint == VOCAB.blueprints.index("conv")
    with pytest.raises(ValueError, match="blueprint_by"):
        HeuristicConfig(blueprint_by="cheapest")


def test_the_every_slot_rule_tries_the_preferred_blueprint_first_and_culls_leniently():
    rule = HeuristicConfig.every_slot("conv")
    assert rule.blueprint_preference[0] == "conv" and rule.blueprint_preference.count("conv") == 1
    assert set(HeuristicConfig().blueprint_preference) <= set(rule.blueprint_preference)
    assert rule.max_active > 1 and rule.tolerance > HeuristicConfig().tolerance
    assert HeuristicConfig.every_slot(blueprint_by="budget").blueprint_by == "budget"
    obs = make_observation([S.DORMANT, S.DORMANT, S.DORMANT], ranks=[4, 4, 4], globals_={"progress": 0.0})
    assert choose(HeuristicPolicy(VOCAB, rule), obs) == Action(Op.GERMINATE, 2, VOCAB.blueprints.index("conv"), 0)
