"""TamiyoPolicy: the masked, factored actor-critic network, independent of the slot count.

The actor encodes each slot's features with one shared encoder, then one self-attention
layer lets slots see each other; mean- and max-pooling over slots plus an encoding of the
global features form the context. Heads, sampled in order (see tamiyo.actions):

    op         from the context
    slot       scores each slot embedding, concatenated with the context and the op's embedding
    blueprint  scores each candidate at the chosen slot from the slot's embedding, the
               context, the candidate's index embedding and an encoding of its features
               (cost, budget use, what kind of module it is)
    blend      from the chosen slot's embedding, the context and the chosen candidate's
               description (index embedding and feature encoding)

The critic is a second network of the same shape (its own encoders, a value MLP on its
context): sharing the trunk would let the value loss reshape the features every head reads.
Nothing is sized by N, so one set of weights runs on hosts with any number of slots; a
blueprint is scored by what it is and costs, so a new host's candidates are not just indices.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, NamedTuple

import torch
from torch import Tensor, nn

from esper.leyline import (
    MAX_BLENDS,
    MAX_BLUEPRINTS,
    NUM_BLUEPRINT_FEATURES,
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


class _Heads(NamedTuple):
    """What the heads chose, before the critic adds its value (see ActionSample)."""

    actions: Tensor
    log_prob: Tensor
    head_log_prob: dict[str, Tensor]
    entropy: dict[str, Tensor]
    masks: ActionMasks


def _layer(n_in: int, n_out: int, gain: float = math.sqrt(2)) -> nn.Linear:
    # Orthogonal init with a small gain on output layers starts every head near uniform.
    layer = nn.Linear(n_in, n_out)
    nn.init.orthogonal_(layer.weight, gain)
    nn.init.zeros_(layer.bias)
    return layer


def _mlp(n_in: int, hidden: int, n_out: int, out_gain: float) -> nn.Sequential:
    return nn.Sequential(_layer(n_in, hidden), nn.Tanh(), _layer(hidden, n_out, out_gain))


class SlotSetEncoder(nn.Module):
    """Slots and globals -> per-slot embeddings [B, N, h] and a context [B, h]."""

    def __init__(self, hidden: int, attention_heads: int):
        super().__init__()
        h = hidden
        self.slot_encoder = nn.Sequential(_layer(NUM_SLOT_FEATURES, h), nn.Tanh(), _layer(h, h), nn.Tanh())
        self.attention = nn.MultiheadAttention(h, attention_heads, batch_first=True)
        self.attention_norm = nn.LayerNorm(h)
        self.global_encoder = nn.Sequential(_layer(NUM_GLOBAL_FEATURES, h), nn.Tanh())
        self.context = nn.Sequential(_layer(3 * h, h), nn.Tanh())

    def forward(self, batch: ObservationBatch) -> tuple[Tensor, Tensor]:
        valid = batch.slot_valid.unsqueeze(-1)
        x = self.slot_encoder(batch.slot_features)
        mixed, _ = self.attention(x, x, x, key_padding_mask=~batch.slot_valid, need_weights=False)
        slots = self.attention_norm(x + mixed)
        mean = (slots * valid).sum(1) / valid.sum(1)
        peak = slots.masked_fill(~valid, MASK_VALUE).amax(1)
        context = self.context(torch.cat([mean, peak, self.global_encoder(batch.global_features)], -1))
        return slots, context


class Critic(nn.Module):
    """The value network, with encoders of its own (see the module docstring)."""

    def __init__(self, hidden: int, attention_heads: int):
        super().__init__()
        self.encoder = SlotSetEncoder(hidden, attention_heads)
        self.head = _mlp(hidden, hidden, 1, 1.0)

    def forward(self, batch: ObservationBatch) -> Tensor:
        _, context = self.encoder(batch)
        return self.head(context).squeeze(-1)


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
        self.encoder = SlotSetEncoder(h, attention_heads)
        self.op_head = _layer(h, NUM_OPS, 0.01)
        self.op_embedding = nn.Embedding(NUM_OPS, h)
        self.slot_head = _mlp(3 * h, h, 1, 0.01)
        self.blueprint_embedding = nn.Embedding(MAX_BLUEPRINTS, h)
        self.candidate_encoder = nn.Sequential(_layer(NUM_BLUEPRINT_FEATURES, h), nn.Tanh())
        self.blueprint_head = _mlp(4 * h, h, 1, 0.01)
        self.blend_head = _mlp(4 * h, h, MAX_BLENDS, 0.01)
        self.critic = Critic(h, attention_heads)

    def get_extra_state(self) -> dict:
        return self.vocab.to_dict()

    def set_extra_state(self, state: dict) -> None:
        mine = self.get_extra_state()
        if state != mine:
            raise ValueError(f"weights were trained with vocabulary {state}, this policy has {mine}")

    @property
    def device(self) -> torch.device:
        return self.op_head.weight.device

    def actor_parameters(self) -> list[nn.Parameter]:
        """Every parameter but the critic's."""
        return [p for name, p in self.named_parameters() if not name.startswith("critic.")]

    def _unroll(
        self,
        batch: ObservationBatch,
        choose: Callable[[str, Tensor], Tensor],
        stored: ActionMasks | None,
    ) -> _Heads:
        """Run the heads in order; `choose` picks each head's index from its masked
        logits. Masks come from `stored` when given, else from the choices so far."""
        slots, context = self.encoder(batch)
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

        def beside(x: Tensor, n: int) -> Tensor:  # [B, h] -> [B, n, h], to sit next to n candidates
            return x.unsqueeze(1).expand(-1, n, -1)

        op = pick("op", self.op_head(context), lambda: op_choices(batch))
        per_slot = [slots, beside(context, batch.num_slots), beside(self.op_embedding(op), batch.num_slots)]
        slot = pick("slot", self.slot_head(torch.cat(per_slot, -1)).squeeze(-1), lambda: slot_choices(batch, op))
        chosen = slots[rows, slot]
        candidates = torch.cat(
            [
                self.blueprint_embedding.weight.unsqueeze(0).expand(batch.size, -1, -1),
                self.candidate_encoder(batch.blueprint_features[rows, slot]),
            ],
            -1,
        )  # [B, MAX_BLUEPRINTS, 2h]
        per_candidate = [beside(chosen, MAX_BLUEPRINTS), beside(context, MAX_BLUEPRINTS), candidates]
        blueprint = pick(
            "blueprint",
            self.blueprint_head(torch.cat(per_candidate, -1)).squeeze(-1),
            lambda: blueprint_choices(batch, op, slot),
        )
        pick(
            "blend",
            self.blend_head(torch.cat([chosen, context, candidates[rows, blueprint]], -1)),
            lambda: blend_choices(batch, op),
        )

        head_log_prob, entropy = {}, {}
        for head in HEADS:
            log_p = torch.log_softmax(logits[head], -1)
            head_log_prob[head] = log_p.gather(-1, picks[head].unsqueeze(-1)).squeeze(-1)
            entropy[head] = -(log_p.exp() * log_p).masked_fill(~masks[head], 0.0).sum(-1)
        return _Heads(
            actions=torch.stack([picks[h] for h in HEADS], -1),
            log_prob=torch.stack(list(head_log_prob.values())).sum(0),
            head_log_prob=head_log_prob,
            entropy=entropy,
            masks=ActionMasks(**masks),
        )

    def value(self, batch: ObservationBatch) -> Tensor:
        """The critic's value of each observation [B]."""
        return self.critic(batch.to(self.device))

    @torch.no_grad()
    def act(self, batch: ObservationBatch, deterministic: bool = False) -> ActionSample:
        """Choose one action per observation, sampling (or taking the argmax) head by head."""

        def choose(head: str, masked_logits: Tensor) -> Tensor:
            if deterministic:
                return masked_logits.argmax(-1)
            return torch.distributions.Categorical(logits=masked_logits).sample()

        batch = batch.to(self.device)
        heads = self._unroll(batch, choose, stored=None)
        return ActionSample(heads.actions, heads.log_prob, heads.head_log_prob, heads.entropy, self.value(batch), heads.masks)

    def evaluate_actor(self, batch: ObservationBatch, actions: Tensor, masks: ActionMasks) -> tuple[Tensor, dict[str, Tensor]]:
        """Log-prob (summed over heads) and per-head entropy of given actions [B, 4] under
        given masks (those stored when they were chosen, or `masks_for` a teacher's)."""
        actions = actions.to(self.device)
        masks = ActionMasks(*(masks[h].to(self.device) for h in HEADS))
        heads = self._unroll(batch.to(self.device), lambda head, _: actions[:, HEADS.index(head)], masks)
        return heads.log_prob, heads.entropy

    def evaluate(self, batch: ObservationBatch, actions: Tensor, masks: ActionMasks) -> tuple[Tensor, dict[str, Tensor], Tensor]:
        """`evaluate_actor`'s log-prob and entropies, and the critic's value."""
        log_prob, entropy = self.evaluate_actor(batch, actions, masks)
        return log_prob, entropy, self.value(batch)

    def decide(self, observations: list[Observation], deterministic: bool = True) -> list[Edit]:
        """The common policy surface: one Edit per environment (greedy by default)."""
        sample = self.act(batch_observations(observations), deterministic=deterministic)
        return [self.vocab.to_edit(sample.row(i), obs) for i, obs in enumerate(observations)]
