"""Hand-built observations for the policy tests: random features, stages and masks that agree."""

from __future__ import annotations

import torch
from hypothesis import strategies as st

from esper.leyline import (
    GLOBAL_FEATURES,
    MAX_BLUEPRINTS,
    NUM_BLUEPRINT_FEATURES,
    NUM_GLOBAL_FEATURES,
    NUM_SLOT_FEATURES,
    SLOT_FEATURES,
    Observation,
    SeedStage,
    Vocabulary,
)
from esper.leyline.observations import STAGE_FEATURES
from esper.simic.features import action_masks

BLUEPRINTS = ["noop", "conv", "attention", "lora"]
BLENDS = ["linear", "sigmoid", "gated"]
BLUEPRINT_RANKS = {"noop": {2, 3, 4}, "conv": {4}, "attention": {3, 4}, "lora": {3}}
STEPS = 5
VOCAB = Vocabulary(BLUEPRINTS, BLENDS, STEPS)


def make_observation(
    stages: list[SeedStage],
    ranks: list[int] | None = None,
    seed: int = 0,
    globals_: dict[str, float] | None = None,
    slots: dict[str, list[float]] | None = None,
    blueprints: list[str] = BLUEPRINTS,
    blends: list[str] = BLENDS,
) -> Observation:
    """Random features in [-1, 1], overridden by `globals_` (name -> value) and `slots`
    (name -> one value per slot); the stage one-hot and the masks follow `stages`/`ranks`."""
    n = len(stages)
    ranks = ranks or [4] * n
    g = torch.Generator().manual_seed(seed)
    global_features = torch.rand(NUM_GLOBAL_FEATURES, generator=g) * 2 - 1
    slot_features = torch.rand(n, NUM_SLOT_FEATURES, generator=g) * 2 - 1
    for name, value in (globals_ or {}).items():
        global_features[GLOBAL_FEATURES.index(name)] = value
    for i, stage in enumerate(stages):
        for name in STAGE_FEATURES:
            slot_features[i, SLOT_FEATURES.index(name)] = float(name == STAGE_FEATURES[stage])
    for name, values in (slots or {}).items():
        slot_features[:, SLOT_FEATURES.index(name)] = torch.tensor(values, dtype=torch.float32)

    fitting = [{b for b in blueprints if rank in BLUEPRINT_RANKS[b]} for rank in ranks]
    op_mask, blueprint_mask, blend_mask = action_masks(stages, fitting, blueprints, blends)
    blueprint_features = (torch.rand(n, MAX_BLUEPRINTS, NUM_BLUEPRINT_FEATURES, generator=g) * 2 - 1) * blueprint_mask.unsqueeze(-1)
    return Observation(global_features, slot_features, op_mask, blueprint_mask, blend_mask, [f"s{i}" for i in range(n)], blueprint_features)


@st.composite
def observations(draw, max_slots: int = 8) -> Observation:
    n = draw(st.integers(1, max_slots))
    stages = draw(st.lists(st.sampled_from(list(SeedStage)), min_size=n, max_size=n))
    ranks = draw(st.lists(st.sampled_from([2, 3, 4, 5]), min_size=n, max_size=n))  # 5: no blueprint fits
    return make_observation(stages, ranks, seed=draw(st.integers(0, 2**16)))
