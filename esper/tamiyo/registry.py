"""The policy registry: every built-in policy by name, one decorated builder each.

    @register_policy("wait")
    def _wait(vocab, *, heuristic, seed):
        return WaitPolicy()

    build_policy("heuristic", vocab, heuristic=HeuristicConfig(train_epochs=2))

Every way of growing (`esper grow --policy NAME`, `esper.Gardener(policy=NAME)`, the
trainer callbacks, `esper train`'s teacher, the evidence tools) builds its policy here, so
a name means the same policy everywhere. A trained Tamiyo comes from a file instead
(`esper.simic.train_files.load_policy`).
"""

from __future__ import annotations

from collections.abc import Callable

from esper.leyline import Edit, Observation, Op, UsageError, Vocabulary
from esper.tamiyo.heuristic import HeuristicConfig, HeuristicPolicy
from esper.tamiyo.random_policy import RandomPolicy

PolicyBuilder = Callable[..., object]
POLICIES: dict[str, PolicyBuilder] = {}


def register_policy(name: str) -> Callable[[PolicyBuilder], PolicyBuilder]:
    """Register `builder(vocab, *, heuristic, seed) -> policy` under `name`."""

    def add(builder: PolicyBuilder) -> PolicyBuilder:
        if name in POLICIES:
            raise ValueError(f"a policy named {name!r} is already registered")
        POLICIES[name] = builder
        return builder

    return add


def policy_names() -> list[str]:
    return sorted(POLICIES)


def build_policy(name: str, vocab: Vocabulary, *, heuristic: HeuristicConfig | None = None, seed: int | None = None):
    """The registered policy `name` over `vocab`. `heuristic` configures the heuristic
    (default HeuristicConfig()); `seed` seeds the random policy's own generator."""
    if name not in POLICIES:
        raise UsageError(f"unknown policy {name!r}: the built-in policies are {', '.join(policy_names())}")
    return POLICIES[name](vocab, heuristic=heuristic or HeuristicConfig(), seed=seed)


class WaitPolicy:
    """The host-only baseline: never grows anything."""

    def decide(self, observations: list[Observation]) -> list[Edit]:
        return [Edit(Op.WAIT) for _ in observations]


@register_policy("heuristic")
def _heuristic(vocab: Vocabulary, *, heuristic: HeuristicConfig, seed: int | None) -> HeuristicPolicy:
    return HeuristicPolicy(vocab, heuristic)


@register_policy("random")
def _random(vocab: Vocabulary, *, heuristic: HeuristicConfig, seed: int | None) -> RandomPolicy:
    return RandomPolicy(vocab, seed=seed)


@register_policy("wait")
def _wait(vocab: Vocabulary, *, heuristic: HeuristicConfig, seed: int | None) -> WaitPolicy:
    return WaitPolicy()
