"""The files of an `esper train` run: the trained policy (tamiyo.pt), the checkpoint
(checkpoint.pt) a killed run resumes from, and the update records of metrics.jsonl. The
.pt files are written atomically (a temporary file, then a rename) and read with
`weights_only=True`.

A pretrained policy (the one esper ships) is two files, like a model checkpoint: its
weights in NAME.safetensors and NAME.yaml, a manifest with the config it was trained with,
the weights' sha256 and what its training did. `load_policy` reads either kind."""

from __future__ import annotations

import hashlib
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import yaml
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

from esper.leyline import CheckpointError, EpisodeSummary, Op
from esper.runs import config as config_io
from esper.runs.files import save_atomic, write_atomic
from esper.runs.metrics import JSONL_NAME, truncate_jsonl
from esper.simic.train_config import TrainConfig
from esper.tamiyo import TamiyoPolicy, mean_or_nan

# A resume may change these: they say how long and where to run, not what is learned.
RESUMABLE_CHANGES = ("episodes", "checkpoint_every", "device", "runner", "world_size", "dist_timeout")


@dataclass
class TrainState:
    """How far a training run got: what a checkpoint restores beside the weights."""

    episodes_done: int = 0  # PPO episodes
    updates_done: int = 0
    warm_done: int = 0  # heuristic episodes of the warm start
    warm_finished: bool = False  # behaviour cloning done
    history: list[dict] = field(default_factory=list)  # one record per PPO update

    @property
    def global_step(self) -> int:
        return self.warm_done + self.episodes_done


def save_policy(policy: TamiyoPolicy, path: Path, cfg: TrainConfig, episodes: int) -> None:
    save_atomic(
        {
            "format": "esper-tamiyo",
            "version": 1,
            "policy": policy.state_dict(),
            **policy.vocab.to_dict(),
            "hidden": cfg.hidden,
            "config": config_io.to_dict(cfg),
            "episodes": episodes,
        },
        path,
    )


PRETRAINED_FORMAT = "esper-tamiyo-pretrained"


def save_pretrained(policy: TamiyoPolicy, manifest_path: Path, cfg: TrainConfig, training: dict) -> None:
    """NAME.safetensors and the NAME.yaml manifest beside it (`training`: what the run did)."""
    manifest_path = Path(manifest_path)
    weights = manifest_path.with_suffix(".safetensors")
    tensors = {k: v.detach().contiguous() for k, v in policy.state_dict().items() if isinstance(v, torch.Tensor)}
    blob = save_tensors(tensors)
    write_atomic(weights, lambda f: f.write(blob))
    manifest = {
        "format": PRETRAINED_FORMAT,
        "version": 1,
        "weights": {"file": weights.name, "sha256": hashlib.sha256(blob).hexdigest()},
        "config": config_io.to_dict(cfg),
        "training": training,
    }
    write_atomic(manifest_path, lambda f: f.write(yaml.safe_dump(manifest, sort_keys=False).encode()))


def _load_pretrained(path: Path) -> tuple[TamiyoPolicy, TrainConfig]:
    try:
        manifest = yaml.safe_load(path.read_text())
        if not isinstance(manifest, dict) or manifest.get("format") != PRETRAINED_FORMAT:
            raise ValueError(f"no {PRETRAINED_FORMAT} manifest inside")
        blob = (path.parent / manifest["weights"]["file"]).read_bytes()
    except Exception as e:
        raise ValueError(f"{path} is not a pretrained Tamiyo manifest ({type(e).__name__}: {e})") from None
    if hashlib.sha256(blob).hexdigest() != manifest["weights"]["sha256"]:
        raise ValueError(f"{manifest['weights']['file']} does not match the sha256 in {path}: the weights are truncated or were modified")
    cfg = config_io.from_dict(TrainConfig, manifest["config"])
    policy = TamiyoPolicy(cfg.vocabulary, hidden=cfg.hidden)
    policy.load_state_dict({**load_tensors(blob), "_extra_state": policy.get_extra_state()})
    return policy.eval(), cfg


def load_policy(path) -> tuple[TamiyoPolicy, TrainConfig]:
    """A trained policy and the config it was trained with: from tamiyo.pt (or a training
    checkpoint.pt), or from a pretrained policy's NAME.yaml manifest."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such policy file: {path}")
    if path.suffix in (".yaml", ".yml"):
        return _load_pretrained(path)
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"{path} is not a Tamiyo policy file ({type(e).__name__}: {e})") from None
    if not isinstance(blob, dict) or blob.get("format") not in ("esper-tamiyo", "esper-train-checkpoint"):
        raise ValueError(f"{path} is not a Tamiyo policy file: `esper train` writes runs/NAME/tamiyo.pt")
    cfg = config_io.from_dict(TrainConfig, blob["config"])
    policy = TamiyoPolicy(cfg.vocabulary, hidden=cfg.hidden)
    policy.load_state_dict(blob["policy"])
    return policy.eval(), cfg


def save_checkpoint(path: Path, cfg: TrainConfig, policy: TamiyoPolicy, optimizer, state: TrainState) -> None:
    """Everything a resumed run needs to continue as if never stopped, RNG states included."""
    rng = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    save_atomic(
        {
            "format": "esper-train-checkpoint",
            "version": 1,
            "config": config_io.to_dict(cfg),
            "policy": policy.state_dict(),
            "optimizer": optimizer.state_dict(),
            "rng": rng,
            **asdict(state),
        },
        path,
    )


def load_checkpoint(path: Path, cfg: TrainConfig, policy: TamiyoPolicy, optimizer) -> TrainState:
    """Restore `policy`, `optimizer` and the RNGs from `path`, which must have been written
    by a run with the same settings as `cfg` (but for RESUMABLE_CHANGES)."""
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(saved, dict) or saved.get("format") != "esper-train-checkpoint":
            raise ValueError("no esper-train-checkpoint inside")
        saved_cfg = config_io.from_dict(TrainConfig, saved["config"])
    except Exception as e:  # a torn or foreign file fails in many ways; each means the same here
        raise CheckpointError(
            f"cannot resume from {path}, which is truncated or not a training checkpoint "
            f"({type(e).__name__}: {' '.join(str(e).split())[:200]}); nothing was changed"
        ) from None
    changed = [k for k in config_io.diff(saved_cfg, cfg) if k not in RESUMABLE_CHANGES]
    if changed:
        raise ValueError(f"--resume continues the saved run, but these settings differ from it: {', '.join(changed)}")
    policy.load_state_dict(saved["policy"])
    optimizer.load_state_dict(saved["optimizer"])
    random.setstate(saved["rng"]["python"])
    torch.set_rng_state(saved["rng"]["torch"])
    if "cuda" in saved["rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(saved["rng"]["cuda"])
    return TrainState(**{k: saved[k] for k in TrainState.__dataclass_fields__})


def drop_records_after(run_dir: Path, state: TrainState) -> int:
    """Remove the metrics.jsonl records of episodes and updates the checkpoint does not
    hold, so that each appears in the log exactly once after a resume. Returns how many."""

    def keep(r: dict) -> bool:
        kind = r.get("kind")
        if kind == "episode":
            return r["episode"] < (state.warm_done if r["phase"] == "warm_start" else state.episodes_done)
        if kind == "update":
            return r["update"] < state.updates_done
        if kind == "warm_start":
            return state.warm_finished
        return True

    return truncate_jsonl(run_dir / JSONL_NAME, keep)


def _named(counts: list[int], names) -> dict[str, int]:
    return {name: int(counts[i]) for i, name in enumerate(names) if i < len(counts)}


def update_record(metrics: dict, summaries: list[EpisodeSummary], cfg: TrainConfig, warnings: list[str]) -> dict:
    """One PPO update's record: `ppo_update`'s metrics with its action counts named, and
    the means of the round's episodes."""
    ops = metrics["op_counts"]
    s = summaries
    return {
        **{key: value for key, value in metrics.items() if not key.endswith("_counts")},
        "actions": _named(ops, [op.name for op in Op]),
        "blueprints": _named(metrics["blueprint_counts"], cfg.blueprints),
        "blends": _named(metrics["blend_counts"], cfg.blends),
        "wait_fraction": ops[Op.WAIT] / max(sum(ops), 1),
        "return_mean": mean_or_nan(x.episode_return for x in s),
        "reward": {c: mean_or_nan(x.reward[c] for x in s) for c in s[0].reward},
        "val_acc_mean": mean_or_nan(x.val_acc for x in s),
        "fossilized_per_episode": mean_or_nan(x.fossilized for x in s),
        "germinated_per_episode": mean_or_nan(x.germinated for x in s),
        "culled_per_episode": mean_or_nan(x.culled for x in s),
        "param_ratio_mean": mean_or_nan(x.param_ratio for x in s),
        "warnings": warnings,
    }
