"""Tamiyo: the growth policies (masked factored PPO network, heuristic, random): observations in, Edits out."""

from esper.tamiyo.actions import HEADS, Action, ActionMasks, Policy, masks_for
from esper.tamiyo.heuristic import HeuristicConfig, HeuristicPolicy
from esper.tamiyo.imitation import CloneResult, ImitationConfig, agreement, behaviour_clone, fit_value
from esper.tamiyo.policy import ActionSample, TamiyoPolicy
from esper.tamiyo.ppo import (
    PPOConfig,
    RolloutBuffer,
    compute_gae,
    explained_variance,
    health_warnings,
    loo_advantages,
    make_optimizer,
    mean_or_nan,
    ppo_update,
    teacher_coef_at,
)
from esper.tamiyo.random_policy import RandomPolicy
from esper.tamiyo.registry import POLICIES, WaitPolicy, build_policy, policy_names, register_policy

__all__ = [
    "HEADS",
    "POLICIES",
    "Action",
    "ActionMasks",
    "ActionSample",
    "CloneResult",
    "HeuristicConfig",
    "HeuristicPolicy",
    "ImitationConfig",
    "PPOConfig",
    "Policy",
    "RandomPolicy",
    "RolloutBuffer",
    "TamiyoPolicy",
    "WaitPolicy",
    "agreement",
    "behaviour_clone",
    "build_policy",
    "compute_gae",
    "explained_variance",
    "fit_value",
    "health_warnings",
    "loo_advantages",
    "make_optimizer",
    "masks_for",
    "mean_or_nan",
    "policy_names",
    "ppo_update",
    "register_policy",
    "teacher_coef_at",
]
