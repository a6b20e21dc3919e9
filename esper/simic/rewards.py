"""Rewards: the one place that says what Tamiyo is paid for.

For the transition s -> s' made by one edit (accuracies are fractions in [0, 1]; on a
next-token task they are next-token accuracies, see esper.simic.tasks):

    r = acc_scale * (val_acc' - val_acc)                                task
      - germination_cost * [edit is GERMINATE]                          churn: paid up front ...
      + germination_cost * #(slots that became FOSSILIZED)              ... refunded only on fossilization
      + gamma * Phi(s') - Phi(s)           (Phi(s') := 0 when done)     shaping
      + done * (terminal_acc_weight * val_acc'                          terminal
                - param_cost * max(0, added' - param_budget))

    Phi(s) = shaping_weight * sum over BLENDING / FOSSILIZED slots of
             clip(min(contribution, val_acc - baseline_acc), 0, contribution_cap)

where baseline_acc is the validation accuracy just before that slot's seed germinated and
added' = (total_params' - host_params) / host_params is the growth the model ends with.
With `relative_to_twin`, every val_acc above is val_acc - twin_acc at the same decision,
twin_acc being the host alone's on the same seed (same initialisation and batch order).

Why each piece:
- The task term pays for real accuracy, measured on the whole model; WAIT earns only
  what the host earns by itself, and nothing for waiting as such.
- Phi is potential-based shaping (Ng et al. 1999): it brings the credit for a good seed
  forward to when its contribution shows, but its discounted sum over an episode is
  exactly gamma^T Phi(s_T) - Phi(s_0) = -Phi(s_0) = 0 (Phi is 0 at the terminal state and
  at the start, when no seed blends), so it cannot be farmed and leaves the optimal
  policy unchanged. `gamma` must be the discount PPO uses.
- Dependence hacking (a seed that makes the host lean on it, so that ablating it costs
  much accuracy, yet the model is no better): a seed's credit is capped by the accuracy
  gained since it germinated and by contribution_cap, and in any case telescopes away.
- Churn (germinate, cull, repeat): each germination costs germination_cost, returned
  only if the seed fossilizes, so every germinate-cull cycle loses that much against
  not germinating at all (the accuracy it briefly added is taken back by the cull).
- The parameter cost is charged once, at the end, on what the model then carries. With
  the defaults a seed adding 10% of the host's parameters costs 0.05, which it repays by
  raising final accuracy by 0.25 points (0.1 per point from the task term, 0.1 from the
  terminal term): growing something useful beats WAIT-forever, growing dead weight does not.
- param_budget is the growth the user grants for free (0.5: up to half the host's size
  again); only growth beyond it is charged. With a budget the reward asks for the most
  accurate model within it, rather than for accuracy per parameter everywhere.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from esper.leyline import ACTIVE_STAGES, Edit, Op, SeedStage, SlotTelemetry
from esper.tamiyo.ppo import PPOConfig

_HOLDS_SEED = ACTIVE_STAGES | {SeedStage.FOSSILIZED}
_CREDITED = frozenset({SeedStage.BLENDING, SeedStage.FOSSILIZED})


@dataclass(frozen=True)
class RewardConfig:
    acc_scale: float = 10.0  # per unit of accuracy change: +1 percentage point = +0.1
    terminal_acc_weight: float = 10.0  # per unit of final validation accuracy, once
    param_cost: float = 0.5  # per unit of (total - host) / host parameters at the end, beyond the budget
    param_budget: float = 0.0  # (total - host) / host parameters that cost nothing
    germination_cost: float = 0.05  # paid at GERMINATE, refunded at FOSSILIZED
    shaping_weight: float = 5.0  # Phi per unit of credited contribution
    contribution_cap: float = 0.05  # most credited contribution per seed (5 points)
    gamma: float = PPOConfig.gamma  # the shaping discount; must equal PPO's
    # Read every accuracy against the same seed's host-alone twin (esper.simic.env runs it
    # once per seed): the return is then what growth added, not what the host learned by
    # itself, which is most of an absolute return and varies from seed to seed.
    relative_to_twin: bool = False


@dataclass(frozen=True)
class RewardState:
    """What the reward reads at one decision point (raw values, not features)."""

    val_acc: float
    host_params: int
    total_params: int
    stages: dict[str, SeedStage]
    contributions: dict[str, float] = field(default_factory=dict)  # slot -> measured; missing: none
    baselines: dict[str, float] = field(default_factory=dict)  # slot -> val_acc before its seed germinated

    @classmethod
    def from_telemetry(
        cls,
        telemetry: list[SlotTelemetry],
        val_acc: float,
        host_params: int,
        total_params: int,
        contributions: dict[str, float],
        prev: "RewardState | None" = None,
    ) -> "RewardState":
        """Build the state, carrying each live seed's baseline over from `prev`; a seed
        that appeared since `prev` gets prev's accuracy (the host without it) as baseline."""
        stages = {t.slot: SeedStage[t.stage] for t in telemetry}
        baselines = {}
        for slot, stage in stages.items():
            if stage not in _HOLDS_SEED:
                continue
            if prev is not None and prev.stages.get(slot) in _HOLDS_SEED:
                baselines[slot] = prev.baselines.get(slot, prev.val_acc)
            else:
                baselines[slot] = prev.val_acc if prev is not None else val_acc
        return cls(val_acc, host_params, total_params, stages, dict(contributions), baselines)


@dataclass(frozen=True)
class RewardBreakdown:
    task: float
    germination: float
    refund: float
    shaping: float
    terminal_acc: float
    param_cost: float

    @property
    def total(self) -> float:
        return self.task + self.germination + self.refund + self.shaping + self.terminal_acc + self.param_cost

    def as_dict(self) -> dict[str, float]:
        return {**asdict(self), "total": self.total}


def credited_contribution(state: RewardState, slot: str, cfg: RewardConfig) -> float:
    """A seed's contribution as the reward believes it: never more than the accuracy
    gained since it germinated, never more than the cap, never negative."""
    measured = state.contributions.get(slot, 0.0)
    gained = state.val_acc - state.baselines.get(slot, state.val_acc)
    return min(max(min(measured, gained), 0.0), cfg.contribution_cap)


def potential(state: RewardState, cfg: RewardConfig) -> float:
    return cfg.shaping_weight * sum(credited_contribution(state, slot, cfg) for slot, stage in state.stages.items() if stage in _CREDITED)


def compute_reward(prev: RewardState, now: RewardState, edit: Edit, done: bool, cfg: RewardConfig | None = None) -> RewardBreakdown:
    """The reward for the transition prev -> now made by `edit`; `done` ends the episode."""
    cfg = cfg or RewardConfig()
    fossilized = sum(
        stage is SeedStage.FOSSILIZED and prev.stages.get(slot) is not SeedStage.FOSSILIZED for slot, stage in now.stages.items()
    )
    next_potential = 0.0 if done else potential(now, cfg)
    added = (now.total_params - now.host_params) / now.host_params
    return RewardBreakdown(
        task=cfg.acc_scale * (now.val_acc - prev.val_acc),
        germination=-cfg.germination_cost if edit.op is Op.GERMINATE else 0.0,
        refund=cfg.germination_cost * fossilized,
        shaping=cfg.gamma * next_potential - potential(prev, cfg),
        terminal_acc=cfg.terminal_acc_weight * now.val_acc if done else 0.0,
        param_cost=-cfg.param_cost * max(0.0, added - cfg.param_budget) if done else 0.0,
    )
