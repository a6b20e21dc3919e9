"""TamiyoPolicy: the masked, factored actor-critic network, independent of the slot count.

Each slot's features go through one shared encoder, then one self-attention layer
lets slots see each other; mean- and max-pooling over slots plus an encoding of the
global features form the context. Heads, sampled in order (see tamiyo.actions):

    op         from the context
    slot       scores each slot embedding, concatenated with the context and the op's embedding
    blueprint  from the chosen slot's embedding and the context
    blend      from the chosen slot's embedding, the context and the blueprint's embedding
    value      from the context

Nothing is sized by N, so one set of weights runs on hosts with any number of slots.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor, nn

from esper.leyline import (
    MAX_BLENDS,
    MAX_BLUEPRINTS,
    NUM_GLOBAL_FEATURES,
    NUM_OPS,
    NUM_SLOT_FEATURES,
    Edit,
    Observation,
    ObservationBatch,
    Vocabulary,
    batch_observations,
)
from esper.tamiyo.actions import (
    HEADS,
    Action,
    ActionMasks,
    blend_choices,
    blueprint_choices,
    check_mask,
    op_choices,
    slot_choices,
)

# Finite, so a masked logit never turns into NaN through inf - inf; far enough below any
# real logit that a masked choice has probability exactly 0 in float32.
MASK_VALUE = -1e8


@dataclass
class ActionSample:
    """A batch of chosen actions with everything PPO needs to store."""

    actions: Tensor  # [B, 4] long: op, slot, blueprint, blend
    log_prob: Tensor  # [B], summed over heads
    head_log_prob: dict[str, Tensor]  # head -> [B]
    entropy: dict[str, Tensor]  # head -> [B]
    value: Tensor  # [B]
    masks: ActionMasks

    def row(self, i: int) -> Action:
        return Action(*(int(v) for v in self.actions[i]))

    @staticmethod
    def cat(samples: list[ActionSample]) -> ActionSample:
        """One sample of the rows of `samples`, in order (slot masks padded to the widest)."""
        width = max(s.masks.slot.shape[1] for s in samples)
        slot = torch.cat([nn.functional.pad(s.masks.slot, (0, width - s.masks.slot.shape[1])) for s in samples])
        masks = ActionMasks(
            torch.cat([s.masks.op for s in samples]),
            slot,
            torch.cat([s.masks.blueprint for s in samples]),
            torch.cat([s.masks.blend for s in samples]),
        )
        return ActionSample(
            torch.cat([s.actions for s in samples]),
            torch.cat([s.log_prob for s in samples]),
            {h: torch.cat([s.head_log_prob[h] for s in samples]) for h in samples[0].head_log_prob},
            {h: torch.cat([s.entropy[h] for s in samples]) for h in samples[0].entropy},
            torch.cat([s.value for s in samples]),
            masks,
        )


def _layer(n_in: int, n_out: int, gain: float = math.sqrt(2)) -> nn.Linear:
    # Orthogonal init with a small gain on output layers starts every head near uniform.
    layer = nn.Linear(n_in, n_out)
    nn.init.orthogonal_(layer.weight, gain)
    nn.init.zeros_(layer.bias)
    return layer


def _mlp(n_in: int, hidden: int, n_out: int, out_gain: float) -> nn.Sequential:
    return nn.Sequential(_layer(n_in, hidden), nn.Tanh(), _layer(hidden, n_out, out_gain))


class TamiyoPolicy(nn.Module):
    """The network policy. `vocab` names the head indices (at most MAX_BLUEPRINTS /
    MAX_BLENDS, in the order the observations use); it is saved in the state dict, and
    loading weights trained with another vocabulary raises."""

    def __init__(self, vocab: Vocabulary, hidden: int = 128, attention_heads: int = 4):
        super().__init__()
        if len(vocab.blueprints) > MAX_BLUEPRINTS or len(vocab.blends) > MAX_BLENDS:
            raise ValueError(f"need 1..{MAX_BLUEPRINTS} blueprints and 1..{MAX_BLENDS} blends")
        self.vocab = vocab
        h = hidden
        self.slot_encoder = nn.Sequential(_layer(NUM_SLOT_FEATURES, h), nn.Tanh(), _layer(h, h), nn.Tanh())
        self.attention = nn.MultiheadAttention(h, attention_heads, batch_first=True)
        self.attention_norm = nn.LayerNorm(h)
        self.global_encoder = nn.Sequential(_layer(NUM_GLOBAL_FEATURES, h), nn.Tanh())
        self.context = nn.Sequential(_layer(3 * h, h), nn.Tanh())
        self.op_head = _layer(h, NUM_OPS, 0.01)
        self.op_embedding = nn.Embedding(NUM_OPS, h)
        self.slot_head = _mlp(3 * h, h, 1, 0.01)
        self.blueprint_head = _mlp(2 * h, h, MAX_BLUEPRINTS, 0.01)
        self.blueprint_embedding = nn.Embedding(MAX_BLUEPRINTS, h)
        self.blend_head = _mlp(3 * h, h, MAX_BLENDS, 0.01)
        self.value_head = _mlp(h, h, 1, 1.0)

    def get_extra_state(self) -> dict:
        return self.vocab.to_dict()

    def set_extra_state(self, state: dict) -> None:
        mine = self.get_extra_state()
        if state != mine:
            raise ValueError(f"weights were trained with vocabulary {state}, this policy has {mine}")

    @property
    def device(self) -> torch.device:
        return self.op_head.weight.device

    def _encode(self, batch: ObservationBatch) -> tuple[Tensor, Tensor]:
        valid = batch.slot_valid.unsqueeze(-1)
        x = self.slot_encoder(batch.slot_features)
        mixed, _ = self.attention(x, x, x, key_padding_mask=~batch.slot_valid, need_weights=False)
        slots = self.attention_norm(x + mixed)
        mean = (slots * valid).sum(1) / valid.sum(1)
        peak = slots.masked_fill(~valid, MASK_VALUE).amax(1)
        context = self.context(torch.cat([mean, peak, self.global_encoder(batch.global_features)], -1))
        return slots, context

    def _unroll(
        self,
        batch: ObservationBatch,
        choose: Callable[[str, Tensor], Tensor],
        stored: ActionMasks | None,
    ) -> ActionSample:
        """Run the heads in order; `choose` picks each head's index from its masked
        logits. Masks come from `stored` when given, else from the choices so far."""
        slots, context = self._encode(batch)
        rows = torch.arange(batch.size, device=context.device)
        masks: dict[str, Tensor] = {}
        logits: dict[str, Tensor] = {}
        picks: dict[str, Tensor] = {}

        def pick(head: str, raw: Tensor, fresh_mask: Callable[[], Tensor]) -> Tensor:
            mask = stored[head] if stored is not None else fresh_mask()
            if mask.shape != raw.shape:
                raise ValueError(f"{head} mask has shape {tuple(mask.shape)}, logits {tuple(raw.shape)}")
            check_mask(mask, head)
            masks[head] = mask
            logits[head] = raw.masked_fill(~mask, MASK_VALUE)
            picks[head] = choose(head, logits[head])
            return picks[head]

        op = pick("op", self.op_head(context), lambda: op_choices(batch))
        n = batch.num_slots
        per_slot = [slots, context.unsqueeze(1).expand(-1, n, -1), self.op_embedding(op).unsqueeze(1).expand(-1, n, -1)]
        slot = pick("slot", self.slot_head(torch.cat(per_slot, -1)).squeeze(-1), lambda: slot_choices(batch, op))
        chosen = slots[rows, slot]
        blueprint = pick(
            "blueprint",
            self.blueprint_head(torch.cat([chosen, context], -1)),
            lambda: blueprint_choices(batch, op, slot),
        )
        pick(
            "blend",
            self.blend_head(torch.cat([chosen, context, self.blueprint_embedding(blueprint)], -1)),
            lambda: blend_choices(batch, op),
        )

        head_log_prob, entropy = {}, {}
        for head in HEADS:
            log_p = torch.log_softmax(logits[head], -1)
            head_log_prob[head] = log_p.gather(-1, picks[head].unsqueeze(-1)).squeeze(-1)
            entropy[head] = -(log_p.exp() * log_p).masked_fill(~masks[head], 0.0).sum(-1)
        return ActionSample(
            actions=torch.stack([picks[h] for h in HEADS], -1),
            log_prob=torch.stack(list(head_log_prob.values())).sum(0),
            head_log_prob=head_log_prob,
            entropy=entropy,
            value=self.value_head(context).squeeze(-1),
            masks=ActionMasks(**masks),
        )

    @torch.no_grad()
    def act(self, batch: ObservationBatch, deterministic: bool = False) -> ActionSample:
        """Choose one action per observation, sampling (or taking the argmax) head by head."""

        def choose(head: str, masked_logits: Tensor) -> Tensor:
            if deterministic:
                return masked_logits.argmax(-1)
            return torch.distributions.Categorical(logits=masked_logits).sample()

        return self._unroll(batch.to(self.device), choose, stored=None)

    def evaluate(self, batch: ObservationBatch, actions: Tensor, masks: ActionMasks) -> tuple[Tensor, dict[str, Tensor], Tensor]:
        """Log-prob (summed over heads), per-head entropy and value of given actions
        [B, 4] under the masks stored when they were chosen."""
        actions = actions.to(self.device)
        masks = ActionMasks(*(masks[h].to(self.device) for h in HEADS))
        sample = self._unroll(batch.to(self.device), lambda head, _: actions[:, HEADS.index(head)], masks)
        return sample.log_prob, sample.entropy, sample.value

    def decide(self, observations: list[Observation], deterministic: bool = True) -> list[Edit]:
        """The common policy surface: one Edit per environment (greedy by default)."""
        sample = self.act(batch_observations(observations), deterministic=deterministic)
        return [self.vocab.to_edit(sample.row(i), obs) for i, obs in enumerate(observations)]
