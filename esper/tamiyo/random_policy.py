"""RandomPolicy: uniform choices under the same autoregressive masks as Tamiyo, a floor baseline.

Each head is uniform over its legal choices given the heads before it (not uniform
over whole joint actions, which would pick GERMINATE almost always, since it alone
multiplies out over blueprints and blends).
"""

from __future__ import annotations

import torch
from torch import Tensor

from esper.leyline import Edit, Observation, Vocabulary, batch_observations
from esper.tamiyo.actions import Action, blend_choices, blueprint_choices, op_choices, slot_choices


class RandomPolicy:
    def __init__(self, vocab: Vocabulary, seed: int | None = None):
        self.vocab = vocab
        self.generator = torch.Generator()
        if seed is None:
            self.generator.seed()
        else:
            self.generator.manual_seed(seed)

    def _uniform(self, mask: Tensor) -> Tensor:
        return torch.multinomial(mask.float(), 1, generator=self.generator).squeeze(-1)

    def choose(self, observations: list[Observation]) -> list[Action]:
        batch = batch_observations(observations)
        op = self._uniform(op_choices(batch))
        slot = self._uniform(slot_choices(batch, op))
        blueprint = self._uniform(blueprint_choices(batch, op, slot))
        blend = self._uniform(blend_choices(batch, op))
        return [Action(*map(int, row)) for row in torch.stack([op, slot, blueprint, blend], -1)]

    def decide(self, observations: list[Observation]) -> list[Edit]:
        return [self.vocab.to_edit(action, obs) for action, obs in zip(self.choose(observations), observations)]
