"""TamiyoPolicy: masks, legality, forced heads, evaluate vs act, slot-count independence."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from esper.leyline import MAX_BLUEPRINTS, Edit, Observation, Op, SeedStage, Vocabulary, batch_observations, legal_ops
from esper.tamiyo import (
    HEADS,
    Action,
    HeuristicPolicy,
    PPOConfig,
    RandomPolicy,
    RolloutBuffer,
    TamiyoPolicy,
    masks_for,
)
from tests.helpers import named
from tests.tamiyo.factory import BLENDS, BLUEPRINTS, STEPS, VOCAB, make_observation, observations

torch.manual_seed(0)
POLICY = TamiyoPolicy(VOCAB, hidden=32)
S = SeedStage
# For comparing two paths to the same numbers: batches of different sizes and padding take
# different matrix kernels and attention paths (act runs without autograd, evaluate with
# it), which round differently. In float64 that rounding is ~1e-15, so torch's float64
# tolerance (1e-7) catches a wrong mask, a padded slot that leaks into the attention or a
# head fed the wrong row, however small its effect.
POLICY64 = copy.deepcopy(POLICY).double()


def float64(batch):
    return dataclasses.replace(
        batch,
        global_features=batch.global_features.double(),
        slot_features=batch.slot_features.double(),
        blueprint_features=batch.blueprint_features.double(),
    )


def assert_legal(obs: Observation, action: Action) -> None:
    op = Op(action.op)
    assert 0 <= action.slot < obs.num_slots
    if op is Op.WAIT:
        assert action.slot == 0
    else:
        assert op in legal_ops(obs.stages()[action.slot])
        assert obs.op_mask[action.slot, op]
    if op is Op.GERMINATE:
        assert action.blueprint < len(BLUEPRINTS) and obs.blueprint_mask[action.slot, action.blueprint]
        assert action.blend < len(BLENDS)
    else:
        assert action.blueprint == 0 and action.blend == 0


@given(st.lists(observations(), min_size=1, max_size=6))
def test_masks_never_fully_masked_and_sampled_actions_are_legal(obs_list):
    batch = batch_observations(obs_list)
    assert batch.op_mask.any(-1).all() and batch.blueprint_mask.any(-1).all()
    sample = POLICY.act(batch)
    for head in HEADS:
        assert sample.masks[head].any(-1).all()
    assert torch.isfinite(sample.log_prob).all() and torch.isfinite(sample.value).all()
    for i, obs in enumerate(obs_list):
        assert_legal(obs, sample.row(i))
        edit = VOCAB.to_edit(sample.row(i), obs)
        if edit.op is not Op.WAIT:
            assert edit.op in legal_ops(obs.stages()[obs.slot_ids.index(edit.slot)])
    for policy in (RandomPolicy(VOCAB, seed=1), HeuristicPolicy(VOCAB)):
        for obs, action in zip(obs_list, policy.choose(obs_list)):
            assert_legal(obs, action)


def test_every_stage_combination_has_a_legal_op():
    for stage in S:
        obs = make_observation([stage, stage], ranks=[5, 4])
        sample = POLICY.act(batch_observations([obs]))
        assert_legal(obs, sample.row(0))


def test_forced_heads_have_zero_log_prob_and_entropy():
    # Every op other than WAIT is legal in at least two slots, so only forcing makes a head certain.
    stages = [S.DORMANT, S.DORMANT, S.TRAINING, S.BLENDING, S.BLENDING, S.FOSSILIZED, S.CULLED]
    obs_list = [make_observation(stages, seed=i) for i in range(300)]
    torch.manual_seed(1)
    sample = POLICY.act(batch_observations(obs_list))
    op = sample.actions[:, 0]
    forced = {"slot": op == Op.WAIT, "blueprint": op != Op.GERMINATE, "blend": op != Op.GERMINATE}
    for head, rows in forced.items():
        assert rows.any() and (~rows).any(), head
        assert (sample.head_log_prob[head][rows] == 0).all()
        assert (sample.entropy[head][rows] == 0).all()
        assert (sample.entropy[head][~rows] > 0).all()

    # Only WAIT is legal anywhere: every head is forced, the whole action has probability 1.
    done = POLICY.act(batch_observations([make_observation([S.FOSSILIZED, S.CULLED])]))
    assert done.row(0) == Action(Op.WAIT, 0, 0, 0)
    assert done.log_prob.item() == 0 and all(e.item() == 0 for e in done.entropy.values())


def test_entropy_counts_valid_choices_only():
    obs = make_observation([S.DORMANT], ranks=[3])  # blueprints for rank 3: noop, attention, lora
    batch = batch_observations([obs])
    actions = torch.tensor([[Op.GERMINATE, 0, 0, 0]])
    _, entropy, _ = POLICY.evaluate(batch, actions, masks_for(batch, actions))
    assert 0 < entropy["blueprint"].item() <= torch.log(torch.tensor(3.0)).item() + 1e-6
    assert 0 < entropy["blend"].item() <= torch.log(torch.tensor(float(len(BLENDS)))).item() + 1e-6


def test_evaluate_reproduces_act_with_stored_masks():
    torch.manual_seed(2)
    stages = list(S)
    num_envs = 5
    buffer = RolloutBuffer(num_envs)
    samples = []
    for step in range(4):
        # Different slot counts per environment, so act pads differently from the minibatches.
        obs_list = [make_observation(stages[: 1 + (e + step) % 6], seed=10 * step + e) for e in range(num_envs)]
        sample = POLICY64.act(float64(batch_observations(obs_list)))
        buffer.add(obs_list, sample, [0.0] * num_envs, [False] * num_envs)
        samples.append(sample)
    buffer.compute_returns(PPOConfig(advantages="gae"))
    old_log_prob = torch.cat([s.log_prob for s in samples])
    old_value = torch.cat([s.value for s in samples])
    assert old_log_prob.dtype == torch.float64
    index = torch.randperm(len(buffer))[:13]
    mb = buffer.minibatch(index)
    log_prob, entropy, value = POLICY64.evaluate(float64(mb.observations), mb.actions, mb.masks)
    torch.testing.assert_close(mb.old_log_prob, old_log_prob[index], rtol=0, atol=0)  # a copy
    torch.testing.assert_close(log_prob, old_log_prob[index], msg=named("log_prob"))
    torch.testing.assert_close(value, old_value[index], msg=named("value"))
    assert set(entropy) == set(HEADS)


def test_same_weights_act_on_any_slot_count():
    small = make_observation([S.DORMANT, S.TRAINING], seed=3)
    large = make_observation([S.DORMANT, S.GERMINATED, S.TRAINING, S.BLENDING, S.FOSSILIZED, S.CULLED, S.DORMANT], seed=4)
    alone = [POLICY64.act(float64(batch_observations([o])), deterministic=True) for o in (small, large)]
    together = POLICY64.act(float64(batch_observations([small, large])), deterministic=True)
    for i, sample in enumerate(alone):
        assert together.row(i) == sample.row(0)
        torch.testing.assert_close(together.log_prob[i], sample.log_prob[0], msg=named(f"log_prob {i}"))
        torch.testing.assert_close(together.value[i], sample.value[0], msg=named(f"value {i}"))
    edits = POLICY.decide([small, large])
    assert len(edits) == 2 and all(isinstance(e, Edit) for e in edits)


def test_to_edit_names_slot_blueprint_and_blend():
    obs = make_observation([S.DORMANT, S.TRAINING])
    assert VOCAB.to_edit(Action(Op.WAIT), obs) == Edit(Op.WAIT)
    assert VOCAB.to_edit(Action(Op.ADVANCE, 1), obs) == Edit(Op.ADVANCE, "s1")
    germinate = VOCAB.to_edit(Action(Op.GERMINATE, 0, 2, 1), obs)
    assert germinate == Edit(Op.GERMINATE, "s0", blueprint="attention", blend="sigmoid", steps=STEPS)


def test_weights_remember_their_vocabulary():
    other = TamiyoPolicy(Vocabulary(["noop", "conv"], BLENDS, STEPS), hidden=32)
    with pytest.raises(ValueError, match="vocabulary"):
        other.load_state_dict(POLICY.state_dict(), strict=False)
    same = TamiyoPolicy(VOCAB, hidden=32)
    same.load_state_dict(POLICY.state_dict())


def _germinate_log_probs(policy, obs: Observation, slot: int) -> torch.Tensor:
    """log pi(GERMINATE, slot, j) for every blueprint j, with the blend forced to index 0 so
    that its head adds nothing: the op and slot heads never see the candidates, so between
    two observations that differ only in candidate features, the differences are the
    blueprint head's."""
    batch = float64(batch_observations([obs] * MAX_BLUEPRINTS))
    actions = torch.tensor([[Op.GERMINATE, slot, j, 0] for j in range(MAX_BLUEPRINTS)])
    masks = masks_for(batch, actions)
    masks.blend = torch.zeros_like(masks.blend)
    masks.blend[:, 0] = True
    masks.blueprint = batch.blueprint_mask[:, slot]  # every row: the legal candidates at the slot
    with torch.no_grad():
        log_prob, _ = policy.evaluate_actor(batch, actions, masks)
    return log_prob


@given(st.integers(0, 2), st.integers(0, 2**16))
def test_the_blueprint_head_scores_candidates_by_their_features(candidate, seed):
    obs = make_observation([S.DORMANT, S.DORMANT], ranks=[4, 4], seed=seed)  # noop, conv, attention fit
    legal = obs.blueprint_mask[1].nonzero().flatten().tolist()
    assert legal == [0, 1, 2]
    base = _germinate_log_probs(POLICY64, obs, slot=1)[legal]

    changed = obs.blueprint_features.clone()
    changed[1, candidate] = -changed[1, candidate] + 0.5
    moved = _germinate_log_probs(POLICY64, dataclasses.replace(obs, blueprint_features=changed), slot=1)[legal]
    # Its logit changed: by little at a near-uniform initialisation, but a candidate whose
    # features were ignored would compute bit for bit the same.
    assert float(moved[candidate] - base[candidate]) != 0.0
    # ...and only the blueprint head moved: P(op) P(slot) is the same, summed over candidates.
    torch.testing.assert_close(moved.exp().sum(), base.exp().sum())

    # Another slot's candidates, and candidates the mask rules out, change nothing.
    elsewhere = obs.blueprint_features.clone()
    elsewhere[0] += 1.0
    elsewhere[1, 3:] += 1.0
    same = _germinate_log_probs(POLICY64, dataclasses.replace(obs, blueprint_features=elsewhere), slot=1)[legal]
    torch.testing.assert_close(same, base, rtol=0, atol=1e-12)


def test_candidates_with_equal_features_still_differ_by_index():
    obs = make_observation([S.DORMANT], ranks=[4], seed=5)
    features = obs.blueprint_features.clone()
    features[0, 1] = features[0, 2]  # conv described exactly as attention
    log_prob = _germinate_log_probs(POLICY64, dataclasses.replace(obs, blueprint_features=features), slot=0)
    assert abs(float(log_prob[1] - log_prob[2])) > 1e-9
