"""Any policy a user can name: a registered one (esper.tamiyo.registry), the pretrained
Tamiyo that ships with esper ("tamiyo"), a trained Tamiyo's file, or an object with
`decide(observations) -> edits`."""

from __future__ import annotations

from pathlib import Path

from esper.leyline import UsageError, Vocabulary
from esper.simic.train_config import TrainConfig
from esper.simic.train_files import load_policy
from esper.tamiyo import POLICIES, HeuristicConfig, build_policy, policy_names

# Pretrained across the host zoo on cheap episodes by tools/pretrain_tamiyo.py (see docs/tamiyo.md).
PRETRAINED = Path(__file__).resolve().parents[1] / "tamiyo" / "pretrained" / "tamiyo.yaml"


def known_policies() -> list[str]:
    """Every policy a name selects: the registered ones and the pretrained Tamiyo."""
    return sorted([*policy_names(), "tamiyo"])


def resolve_policy(
    policy, vocab: Vocabulary, *, heuristic: HeuristicConfig | None = None, seed: int | None = None
) -> tuple[object, Vocabulary, TrainConfig | None]:
    """(policy, the vocabulary it decides in, the config it was trained with or None).

    A registered name builds over `vocab`; "tamiyo" and a path load a trained policy
    (weights only: never unpickles code), which brings its own vocabulary; an object is
    used as it is, in its own `vocab` if it has one."""
    if isinstance(policy, (str, Path)):
        if str(policy) in POLICIES:
            return build_policy(str(policy), vocab, heuristic=heuristic, seed=seed), vocab, None
        path = PRETRAINED if str(policy) == "tamiyo" else Path(policy)
        if not path.is_file():
            raise UsageError(
                f"policy {str(policy)!r}: no such file, and not one of the built-in policies "
                f"{', '.join(known_policies())}; a trained policy is runs/NAME/tamiyo.pt"
            )
        try:
            trained, cfg = load_policy(path)
        except (ValueError, RuntimeError) as e:
            raise UsageError(f"policy {str(policy)!r}: {e}") from e
        return trained, trained.vocab, cfg
    if not callable(getattr(policy, "decide", None)):
        raise TypeError(f"a policy needs decide(observations) -> edits; got {type(policy).__name__}")
    return policy, getattr(policy, "vocab", None) or vocab, None
