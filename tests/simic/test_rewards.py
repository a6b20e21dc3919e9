"""The reward's guards, on small hand-built episodes: churn, dependence hacking, WAIT, shaping."""

from __future__ import annotations

import random

import pytest

from esper.leyline import Edit, Op, SeedStage, SlotTelemetry
from esper.simic.rewards import RewardConfig, RewardState, compute_reward, credited_contribution, potential
from esper.tamiyo import PPOConfig

S = SeedStage
HOST = 100_000
SEED = 10_000  # a seed adding 10% of the host's parameters
WAIT = Edit(Op.WAIT)


def telemetry(stages: dict[str, SeedStage]) -> list[SlotTelemetry]:
    return [SlotTelemetry(name, stage.name, (8, 4, 2, 2), 0, 0.0, 0) for name, stage in stages.items()]


def run(steps, cfg=None, start_acc=0.6):
    """Play (edit, val_acc, stages, contributions, total_params) transitions from all-DORMANT;
    the last one ends the episode. Returns the breakdowns and the states visited."""
    cfg = cfg or RewardConfig()
    prev = RewardState.from_telemetry(telemetry({k: S.DORMANT for k in steps[0][2]}), start_acc, HOST, HOST, {})
    states, rewards = [prev], []
    for i, (edit, acc, stages, contributions, params) in enumerate(steps):
        now = RewardState.from_telemetry(telemetry(stages), acc, HOST, params, contributions, prev)
        rewards.append(compute_reward(prev, now, edit, done=i == len(steps) - 1, cfg=cfg))
        states.append(now)
        prev = now
    return rewards, states


def total(rewards, gamma=1.0) -> float:
    return sum(gamma**t * r.total for t, r in enumerate(rewards))


def waiting(epochs: int, accs=None):
    accs = accs or [0.6] * epochs
    return [(WAIT, acc, {"a": S.DORMANT}, {}, HOST) for acc in accs]


def seed_life(acc_before: float, blend_accs: list[float], contributions: list[float], end: Op, params=SEED):
    """Germinate, train 2 epochs, blend over len(blend_accs) epochs, then `end` (CULL or FOSSILIZE)."""
    steps = [
        (Edit(Op.GERMINATE, "a", blueprint="conv"), acc_before, {"a": S.GERMINATED}, {}, HOST + params),
        (Edit(Op.ADVANCE, "a"), acc_before, {"a": S.TRAINING}, {}, HOST + params),
        (WAIT, acc_before, {"a": S.TRAINING}, {}, HOST + params),
        (Edit(Op.ADVANCE, "a"), acc_before, {"a": S.BLENDING}, {}, HOST + params),
    ]
    for acc, c in zip(blend_accs, contributions):
        steps.append((WAIT, acc, {"a": S.BLENDING}, {"a": c}, HOST + params))
    if end is Op.CULL:
        steps.append((Edit(Op.CULL, "a"), acc_before, {"a": S.CULLED}, {}, HOST))
        steps.append((WAIT, acc_before, {"a": S.DORMANT}, {}, HOST))
    else:
        steps.append((Edit(Op.FOSSILIZE, "a"), blend_accs[-1], {"a": S.FOSSILIZED}, {"a": contributions[-1]}, HOST + params))
    return steps


def test_waiting_earns_nothing_by_itself():
    rewards, _ = run(waiting(3))
    assert [r.total for r in rewards[:-1]] == [0.0, 0.0]
    assert rewards[-1].total == rewards[-1].terminal_acc == RewardConfig().terminal_acc_weight * 0.6


def test_the_task_term_pays_every_change_of_accuracy_at_acc_scale():
    accs = [0.63, 0.61, 0.61, 0.66]
    changes = [b - a for a, b in zip([0.6, *accs[:-1]], accs)]
    for cfg in (RewardConfig(), RewardConfig(acc_scale=3.0)):
        rewards, _ = run(waiting(len(accs), accs), cfg)
        assert [r.task for r in rewards] == pytest.approx([cfg.acc_scale * c for c in changes])
    # The documented default: one percentage point is worth 0.1, gained or lost.
    rewards, _ = run(waiting(1, [0.61]))
    assert rewards[0].task == pytest.approx(0.1)


def test_a_germinate_cull_loop_loses_reward():
    # Each cycle's seed blends in, shows a contribution, lifts accuracy a point, and is culled.
    cycle = seed_life(0.6, [0.605, 0.61], [0.005, 0.01], Op.CULL)
    churn, _ = run(cycle * 4 + waiting(2))
    idle, _ = run(waiting(len(churn)))
    gamma = PPOConfig().gamma
    # Undiscounted, shaping with gamma < 1 only takes a little more away: (gamma - 1) Phi per step.
    assert total(churn) - total(idle) <= -4 * RewardConfig().germination_cost + 1e-9
    assert total(churn, gamma) < total(idle, gamma)
    assert sum(r.total - r.terminal_acc for r in churn) < 0  # negative once the common final score is set aside


def test_germination_cost_is_refunded_only_by_fossilization():
    rewards, _ = run(seed_life(0.6, [0.6, 0.6], [0.0, 0.0], Op.FOSSILIZE))
    assert sum(r.germination for r in rewards) == -RewardConfig().germination_cost
    assert sum(r.germination + r.refund for r in rewards) == 0.0
    culled, _ = run(seed_life(0.6, [0.6, 0.6], [0.0, 0.0], Op.CULL))
    assert sum(r.refund for r in culled) == 0.0


def test_wait_forever_scores_below_useful_growth_and_above_dead_weight():
    host = [0.5 + 0.02 * i for i in range(10)] + [0.7] * 12  # improves, then plateaus at 0.70
    idle, _ = run(waiting(len(host), host))
    # From the plateau, a seed lifts validation accuracy by 2 points while adding 10% parameters.
    useful_life = seed_life(0.7, [0.71, 0.72], [0.01, 0.02], Op.FOSSILIZE)
    tail = [(WAIT, 0.72, {"a": S.FOSSILIZED}, {"a": 0.02}, HOST + SEED)] * (len(host) - 10 - len(useful_life))
    useful, _ = run(waiting(10, host[:10]) + useful_life + tail)
    dead_life = seed_life(0.7, [0.7, 0.7], [0.0, 0.0], Op.FOSSILIZE)
    dead_tail = [(WAIT, 0.7, {"a": S.FOSSILIZED}, {"a": 0.0}, HOST + SEED)] * len(tail)
    dead, _ = run(waiting(10, host[:10]) + dead_life + dead_tail)
    assert len(idle) == len(useful) == len(dead)
    for gamma in (1.0, PPOConfig().gamma):
        assert total(useful, gamma) > total(idle, gamma) > total(dead, gamma)
    assert useful[-1].param_cost == pytest.approx(-0.05) and idle[-1].param_cost == 0.0


def test_dependence_is_not_credited():
    cfg = RewardConfig()
    # The seed germinated at 0.60; ablating it now costs 30 points, yet the model is no better.
    hooked, states = run(seed_life(0.6, [0.6, 0.6, 0.6], [0.1, 0.2, 0.3], Op.FOSSILIZE) + waiting(1))
    assert all(potential(s, cfg) == 0.0 for s in states)
    assert all(r.shaping == 0.0 for r in hooked)
    # Credit is the smaller of the measured contribution and the gain since germination, capped.
    _, states = run(seed_life(0.6, [0.62, 0.7], [0.3, 0.3], Op.FOSSILIZE) + waiting(1))
    assert credited_contribution(states[5], "a", cfg) == pytest.approx(0.02)
    assert credited_contribution(states[6], "a", cfg) == cfg.contribution_cap


def _random_episode(rng: random.Random, length: int):
    """Random stages, accuracies and contributions, only loosely following the lifecycle:
    telescoping must hold for any sequence of states."""
    steps = []
    for _ in range(length):
        stages = {k: rng.choice(list(S)) for k in ("a", "b", "c")}
        contributions = {k: rng.uniform(-0.1, 0.3) for k in stages if rng.random() < 0.8}
        steps.append((WAIT, rng.uniform(0.3, 0.9), stages, contributions, HOST))
    return steps


@pytest.mark.parametrize("seed", range(5))
def test_shaping_telescopes(seed):
    rng = random.Random(seed)
    episode = _random_episode(rng, 12)
    for gamma in (1.0, 0.9):
        cfg = RewardConfig(gamma=gamma)
        # Mid-episode (not done): the discounted shaping sum is gamma^T Phi(s_T) - Phi(s_0).
        rewards, states = run(episode + [episode[-1]], cfg)
        rewards, states = rewards[:-1], states[:-1]
        shaped = sum(gamma**t * r.shaping for t, r in enumerate(rewards))
        expected = gamma ** len(rewards) * potential(states[-1], cfg) - potential(states[0], cfg)
        assert shaped == pytest.approx(expected, abs=1e-9)
        assert any(potential(s, cfg) > 0 for s in states)
        # A whole episode: Phi of the terminal state is 0, so the shaping sums to -Phi(s_0) = 0.
        rewards, _ = run(episode, cfg)
        assert sum(gamma**t * r.shaping for t, r in enumerate(rewards)) == pytest.approx(0.0, abs=1e-9)


def test_breakdown_adds_up():
    rewards, _ = run(seed_life(0.6, [0.61, 0.62], [0.01, 0.02], Op.FOSSILIZE))
    for r in rewards:
        parts = r.as_dict()
        assert parts.pop("total") == pytest.approx(sum(parts.values()))
    assert RewardConfig().gamma == PPOConfig().gamma


@pytest.mark.parametrize("params", [SEED // 2, SEED, 3 * SEED])
def test_growth_within_the_budget_is_free_and_beyond_it_is_charged_linearly(params):
    budget = SEED / HOST  # the budget grants exactly one SEED of growth
    life = seed_life(0.6, [0.61, 0.62], [0.01, 0.02], Op.FOSSILIZE, params=params)
    budgeted, _ = run(life, RewardConfig(param_budget=budget))
    unbudgeted, _ = run(life, RewardConfig())
    cost = RewardConfig().param_cost
    assert unbudgeted[-1].param_cost == pytest.approx(-cost * params / HOST)
    assert budgeted[-1].param_cost == pytest.approx(-cost * max(0, params - SEED) / HOST)
    # Only the terminal charge moves: every other component is the same with or without a budget.
    for b, u in zip(budgeted, unbudgeted):
        assert b.total - b.param_cost == pytest.approx(u.total - u.param_cost)
