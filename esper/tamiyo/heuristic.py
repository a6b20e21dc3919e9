"""HeuristicPolicy: the hand-written gardener, a baseline for Tamiyo and a teacher for imitation.

Rules, first match wins, one action per environment and step:
  1. a BLENDING seed is culled when it does harm: its contribution fell `decline` below
     its best so far, or it finished blending with a contribution at or below
     -`tolerance`, or the training loss rose by more than `loss_rise` (relative) over the
     interval it blended in, where a host alone keeps lowering it;
  2. a BLENDING seed that finished blending (alpha 1) otherwise is fossilized;
  3. a GERMINATED seed is advanced at once, a TRAINING one after `train_epochs` epochs
     (in a growth run the plane moves seeds on by itself, `training_ticks`, and then
     this rule finds nothing to do);
  4. when the host counts as stalled (less than `plateau` accuracy gained over 3
     decisions; with the default 1.0 always, and then no history is needed), fewer than
     `max_active` seeds are live and the episode is between `earliest_germination` and
     `latest_germination` of the way through, the deepest slot that may germinate (or the
     earliest, with germinate_at "first") gets a blueprint: the first applicable preferred
     one, or with blueprint_by "budget" the largest (by parameters) that fits in what is
     left of the parameter budget (the preferred one when none fits);
  5. otherwise WAIT.
It reads only the observation (scaled features, decoded with the leyline scales), so it
runs wherever the network policy runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from esper.leyline import ACTIVE_STAGES, Edit, Observation, Op, SeedStage, Vocabulary
from esper.leyline.observations import ACC_SCALE, BLUEPRINT_FEATURES, EPOCH_SCALE
from esper.tamiyo.actions import Action


@dataclass
class HeuristicConfig:
    """The heuristic's settings (saved in a run's config.yaml), in ticks. With the
    defaults a seed germinates at the first decision and fossilizes about 2 + train_epochs
    + blend_steps ticks later."""

    # Tried in this order, among those in the policy's vocabulary that the slot accepts.
    blueprint_preference: list[str] = field(default_factory=lambda: ["depthwise", "lora", "attention", "conv_enhance", "mlp"])
    plateau: float = 1.0  # accuracy gained over 3 ticks below which the host counts as stalled (1.0: always)
    train_epochs: int = 1
    max_active: int = 1
    # Germinate between these fractions of the episode: growing while the host still
    # underfits pays more than growing once it has converged, and a seed grown late
    # trains too little to pay for itself (on CIFAR-10, germinating only in the first
    # quarter gained more than in the first half, on the narrow host and the deep one).
    earliest_germination: float = 0.0
    latest_germination: float = 0.25
    decline: float = 0.05  # validation probes of a few hundred images move by a few points
    # A host alone lowers its training loss from one interval to the next; a seed that
    # blends in while the loss rises by more than this (relative) is doing harm.
    loss_rise: float = 0.02
    # A seed just blended in has had little time to help, and a probe of a few hundred
    # images is noisy (one standard error is about 2 points at 500 images): a blended seed
    # contributing more than -tolerance is fossilized; harm shows in the loss-rise rule too.
    tolerance: float = 0.02
    # Where to germinate: "first", the earliest free slot; "last", the deepest, where a
    # seed of a host trained from scratch changes the most in a short episode.
    germinate_at: str = "last"
    # "preference": the first of blueprint_preference the slot accepts. "budget": the
    # largest that fits in what is left of the reward's parameter budget, so that a wide
    # host gets whole convolutions where a narrow one gets what it can afford; with no
    # budget nothing fits and the preference decides.
    blueprint_by: str = "preference"

    @classmethod
    def every_slot(cls, preferred: str | None = None, **changes) -> HeuristicConfig:
        """The rule of the evidence benchmark and Tamiyo's teacher: up to four seeds at once,
        a seed in every slot of most hosts (deepest first), `preferred` tried first, and
        lenient culls. A seed blended in after a few ticks of isolated training has not yet
        been trained with the host, so ablating it then says little about what it will add
        by the end (static seeds gain most from co-training): keep every seed that is not
        clearly harmful, and cull only on a large measured harm or fall. A search over these
        settings on proxy episodes (tools/search_teacher.py) found none better."""
        preference = cls().blueprint_preference
        if preferred is not None:
            preference = [preferred] + [b for b in preference if b != preferred]
        return cls(**{"blueprint_preference": preference, "max_active": 4, "tolerance": 0.1, "decline": 0.1, **changes})

    def __post_init__(self):
        if self.blueprint_by not in ("preference", "budget"):
            raise ValueError(f"blueprint_by must be 'preference' or 'budget', got {self.blueprint_by!r}")
        if self.germinate_at not in ("first", "last"):
            raise ValueError(f"germinate_at must be 'first' or 'last', got {self.germinate_at!r}")
        if not 0.0 <= self.earliest_germination <= self.latest_germination <= 1.0:
            raise ValueError(
                f"need 0 <= earliest_germination <= latest_germination <= 1, got {self.earliest_germination}, {self.latest_germination}"
            )


class HeuristicPolicy:
    """Rule-based growth policy with the common `decide` surface; `choose` gives the
    same decisions as index actions (for imitation)."""

    def __init__(self, vocab: Vocabulary, cfg: HeuristicConfig | None = None):
        self.vocab = vocab
        self.cfg = cfg or HeuristicConfig()
        preferred = [vocab.blueprints.index(name) for name in self.cfg.blueprint_preference if name in vocab.blueprints]
        self.blueprint_order = preferred + [i for i in range(len(vocab.blueprints)) if i not in preferred]
        self._best: dict[tuple[int, str], float] = {}  # (env, slot) -> best contribution while blending

    def decide(self, observations: list[Observation]) -> list[Edit]:
        return [self.vocab.to_edit(action, obs) for action, obs in zip(self.choose(observations), observations)]

    def choose(self, observations: list[Observation]) -> list[Action]:
        return [self._choose(env, obs) for env, obs in enumerate(observations)]

    def _choose(self, env: int, obs: Observation) -> Action:
        stages = obs.stages()
        alpha = obs.slot_feature("alpha").tolist()
        epochs = (obs.slot_feature("ticks_in_stage") * EPOCH_SCALE).round().int().tolist()
        contribution = (obs.slot_feature("contribution") / ACC_SCALE).tolist()
        known = (obs.slot_feature("contribution_known") > 0.5).tolist()
        legal = obs.op_mask
        # The loss of the interval just trained against the one before it: unknown (0) until
        # two intervals have been trained.
        loss_rose = obs.global_feature("delta_1_known") > 0.5 and obs.global_feature("train_loss_delta_1") > self.cfg.loss_rise

        for n, stage in enumerate(stages):
            key = (env, obs.slot_ids[n])
            if stage is not SeedStage.BLENDING:
                self._best.pop(key, None)  # the seed this memory was about is gone
                continue
            if loss_rose and legal[n, Op.CULL]:
                return Action(Op.CULL, n)
            if not known[n]:
                continue
            best = self._best[key] = max(self._best.get(key, contribution[n]), contribution[n])
            done_blending = alpha[n] >= 1.0
            if contribution[n] < best - self.cfg.decline or (done_blending and contribution[n] <= -self.cfg.tolerance):
                return Action(Op.CULL, n)
            if done_blending and legal[n, Op.FOSSILIZE]:
                return Action(Op.FOSSILIZE, n)

        for n, stage in enumerate(stages):
            ready = stage is SeedStage.GERMINATED or (stage is SeedStage.TRAINING and epochs[n] >= self.cfg.train_epochs)
            if ready and legal[n, Op.ADVANCE]:
                return Action(Op.ADVANCE, n)

        live = sum(stage in ACTIVE_STAGES for stage in stages)
        stalled = self.cfg.plateau >= 1.0 or (
            obs.global_feature("delta_3_known") > 0.5 and obs.global_feature("val_acc_delta_3") / ACC_SCALE < self.cfg.plateau
        )
        progress = obs.global_feature("progress")
        in_window = self.cfg.earliest_germination <= progress <= self.cfg.latest_germination
        if live < self.cfg.max_active and stalled and in_window:
            free = [n for n in range(obs.num_slots) if legal[n, Op.GERMINATE]]
            for n in free[-1:] if self.cfg.germinate_at == "last" else free:
                blueprint = self._blueprint(obs, n)
                blend = int(obs.blend_mask.int().argmax())  # the first available blend
                return Action(Op.GERMINATE, n, blueprint, blend)
        return Action(Op.WAIT)

    def _blueprint(self, obs: Observation, slot: int) -> int:
        accepted = [i for i in self.blueprint_order if obs.blueprint_mask[slot, i]]
        if self.cfg.blueprint_by == "budget":
            rows = obs.blueprint_features[slot]
            fits = [i for i in accepted if rows[i, _FITS] > 0.5]
            if fits:
                return max(fits, key=lambda i: float(rows[i, _PARAMS]))  # ties: the preferred one
        return accepted[0]


_PARAMS = BLUEPRINT_FEATURES.index("param_ratio")
_FITS = BLUEPRINT_FEATURES.index("fits_budget")
