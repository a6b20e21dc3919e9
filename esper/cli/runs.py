"""What `esper train` and `esper grow` share: settings from flags and files, hosts, data, devices.

Every user mistake here becomes a UsageError (one line, exit 2) before any training starts.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
from pathlib import Path

import torch

from esper.graph.modes import eval_mode
from esper.leyline import EsperError, UsageError
from esper.runs import config as config_io
from esper.runs.files import CHECKPOINT, CONFIG, POLICY
from esper.simic.train_config import TrainConfig, load_config

# Without --limit, the synthetic tasks are cut to this many training examples, so that the
# demo commands finish in minutes on a laptop CPU; real datasets are used whole.
SYNTHETIC_LIMIT = 6000

# flag dest -> dotted TrainConfig key
SETTINGS = {
    "host": "host",
    "data": "data",
    "data_root": "data_root",
    "download": "download",
    "limit": "limit",
    "context": "context",
    "episodes": "episodes",
    "envs": "envs",
    "runner": "runner",
    "epochs": "env.epochs",
    "decisions_per_epoch": "env.decisions_per_epoch",
    "batch_size": "env.batch_size",
    "lr": "env.lr",
    "optimizer": "env.optimizer",
    "blend_steps": "env.blend_steps",
    "max_slots": "env.max_slots",
    "augment": "env.augment",
    "channels_last": "env.channels_last",
    "precision": "env.precision",
    "compile": "env.compile",
    "seed": "seed",
    "device": "device",
    "dist_timeout": "dist_timeout",
    "warm_start": "warm_start",
    "checkpoint_every": "checkpoint_every",
    "ppo_lr": "ppo.learning_rate",
}

# flag dest -> the least value it takes (counts and sizes: 0 or less is a mistake, named by its flag)
MINIMUM = {
    "limit": 1,
    "context": 2,
    "episodes": 1,
    "envs": 1,
    "epochs": 1,
    "decisions_per_epoch": 1,
    "batch_size": 1,
    "blend_steps": 1,
    "max_slots": 1,
    "warm_start": 0,
    "checkpoint_every": 1,
}
POSITIVE = ("lr", "ppo_lr", "dist_timeout")  # flag dests that must be above 0

# What an esper run writes into its directory: --overwrite replaces only a directory that holds one of these.
RUN_FILES = frozenset({CHECKPOINT, CONFIG, POLICY, "metrics.jsonl", "summary.json", "edits.yaml", "report.md", "model", "tb"})


def add_common(p: argparse.ArgumentParser) -> None:
    """Flags both commands take. Every default is None: unset flags leave the config alone."""
    p.add_argument("--host", help="model file: build_model(), `model`, or one nn.Module class (e.g. examples/host_cnn.py)")
    p.add_argument(
        "--data",
        help="'synthetic' (default), 'cifar10', an ImageFolder directory / .tar.gz, or a sequence "
        "task: 'text:PATH' (characters of a text file), 'bytes:PATH', 'seq-synthetic'",
    )
    p.add_argument("--data-root", help="where datasets are downloaded and cached (default ~/.cache/esper)")
    p.add_argument("--download", action="store_const", const=True, help="download the dataset if it is missing")
    p.add_argument(
        "--limit",
        type=int,
        help=f"training images to use, the validation share included (default: {SYNTHETIC_LIMIT} for synthetic and "
        "seq-synthetic, all otherwise); for text, training windows. The test split is always used whole",
    )
    p.add_argument("--context", type=int, help="tokens per sequence for sequence data (default 64)")
    p.add_argument("--epochs", type=int, help="epochs per episode (default 8)")
    p.add_argument("--decisions-per-epoch", type=int, help="growth decisions per epoch (default 1)")
    p.add_argument("--batch-size", type=int, help="host training batch size (default 128)")
    p.add_argument("--lr", type=float, help="host learning rate (default 2e-3, AdamW; for SGD try 0.05)")
    p.add_argument("--optimizer", choices=["sgd", "adamw"], help="host optimizer (default adamw)")
    p.add_argument("--blend-steps", type=int, help="decisions a seed takes to blend in (default 2)")
    p.add_argument("--max-slots", type=int, help="at most this many seed slots in the host")
    p.add_argument("--augment", action="store_const", const=True, help="random crops and flips while training")
    p.add_argument("--seed", type=int, help="random seed (default 0)")
    p.add_argument("--device", help="cpu or cuda (default cpu)")
    p.add_argument("--dist-timeout", type=float, help="under torchrun: seconds a rank waits for the others (default 600)")
    p.add_argument("--precision", choices=["fp32", "bf16"], help="bf16: autocast the forward passes on CUDA (default fp32)")
    p.add_argument("--channels-last", action="store_const", const=True, help="NHWC activations (faster convolutions, also on CPU)")
    p.add_argument(
        "--compile",
        action="store_const",
        const=True,
        help="training forward passes under torch.compile, compiled again only when an edit changes the model "
        "(CUDA graphs on cuda; the CPU needs a C++ compiler; the batched runner keeps its own vmapped graph)",
    )
    p.add_argument("--config", help="a YAML file of settings (as written to a run's config.yaml)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def explicit_settings(args: argparse.Namespace) -> dict:
    return {key: getattr(args, dest) for dest, key in SETTINGS.items() if getattr(args, dest, None) is not None}


def _flag(dest: str) -> str:
    return "--" + dest.replace("_", "-")


def check_counts(args: argparse.Namespace) -> None:
    """Counts, sizes and rates given on the command line, each refused by its flag and value
    when it is out of range (before a config is built from them)."""
    for dest, least in MINIMUM.items():
        value = getattr(args, dest, None)
        if value is not None and value < least:
            raise UsageError(f"{_flag(dest)} must be at least {least}, got {value}")
    for dest in POSITIVE:
        value = getattr(args, dest, None)
        if value is not None and not value > 0:
            raise UsageError(f"{_flag(dest)} must be above 0, got {value}")


def _unknown(field: str, names, known, what: str) -> None:
    unknown = [name for name in names if name not in known]
    if unknown:
        raise UsageError(f"{field}: unknown {what} {', '.join(repr(n) for n in unknown)}; known {what}s: {', '.join(known)}")


def check_names(cfg: TrainConfig) -> None:
    """Every name a config gives (blueprints, blends, the heuristic's preference, fossils,
    per-head coefficients) is a registered one: a misspelt name is an error naming its
    setting and the known names, never silently skipped."""
    from esper.kasmina.blending import blend_names
    from esper.kasmina.blueprints import blueprint_names
    from esper.simic.schedules import SEED_LR_RULES
    from esper.tamiyo.actions import HEADS

    blueprints, blends = blueprint_names(), blend_names()
    _unknown("blueprints", cfg.blueprints, blueprints, "blueprint")
    _unknown("blends", cfg.blends, blends, "blend")
    _unknown("heuristic.blueprint_preference", cfg.heuristic.blueprint_preference, blueprints, "blueprint")
    _unknown("env.fossils", list(cfg.env.fossils.values()), blueprints, "blueprint")
    _unknown("env.seed_lr_rule", [cfg.env.seed_lr_rule], SEED_LR_RULES, "rule")
    for name in ("entropy_coef", "entropy_floor"):
        _unknown(f"ppo.{name}", list(getattr(cfg.ppo, name)), HEADS, "head")


def build_config(args: argparse.Namespace, base: TrainConfig | None = None) -> TrainConfig:
    """Defaults, then --config (or `base`), then the flags given on the command line."""
    check_counts(args)
    try:
        if base is None:
            base = load_config(args.config) if getattr(args, "config", None) else TrainConfig()
        cfg = config_io.with_overrides(base, explicit_settings(args))
        if (
            cfg.limit is None
            and cfg.data in ("synthetic", "seq-synthetic")
            and "limit" not in explicit_settings(args)
            and not getattr(args, "config", None)
        ):
            cfg = config_io.with_overrides(cfg, {"limit": SYNTHETIC_LIMIT})
        check_names(cfg)
        return cfg.resolved()
    except (ValueError, FileNotFoundError, TypeError) as e:
        raise UsageError(str(e)) from e


def check_device(name: str, compile: bool = False) -> torch.device:
    from esper.kasmina.model import why_not_compiled

    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(f"--device {name!r} is not a device: use cpu or cuda") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA device is available here; use --device cpu")
    if device.type not in ("cpu", "cuda"):
        raise UsageError(f"--device {name!r}: esper trains on cpu or cuda")
    why = why_not_compiled(device) if compile else None
    if why is not None:
        raise UsageError(f"--compile: {why}")
    return device


def load_dataset(cfg: TrainConfig, progress: bool = True):
    from esper.data.splits import load_data

    try:
        return load_data(
            cfg.data,
            root=cfg.data_root,
            download=cfg.download,
            val_fraction=cfg.val_fraction,
            seed=cfg.seed,
            limit=cfg.limit,
            device="cpu",
            progress=progress,
            context=cfg.context,
        )
    except (EsperError, ValueError, FileNotFoundError, OSError) as e:
        raise UsageError(f"--data {cfg.data}: {e}") from e


def check_out_dir(path: str, *, overwrite: bool = False, resume: bool | None = None) -> Path:
    """--out, checked before anything is loaded or written: a new run starts only in a new
    or empty directory, unless --overwrite replaces the run there (`clear_out_dir`, once the
    run is about to write) or, where the command takes --resume (`resume` is not None), it
    continues the run whose checkpoint is there. A refusal changes nothing."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file, not a directory")
    held = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    shown = ", ".join(held[:4]) + (", ..." if len(held) > 4 else "")
    if resume:
        if overwrite:
            raise UsageError("--resume continues the run in --out and --overwrite replaces it: pass one of them")
        if not (out / CHECKPOINT).is_file():
            why = "no such directory" if not out.exists() else f"it holds {shown}" if held else "the directory is empty"
            raise UsageError(
                f"--resume: {out} has no {CHECKPOINT} to resume from ({why}); start a new run without --resume; nothing was changed"
            )
        return out
    if not held:
        return out
    if overwrite:
        _check_replaceable(out, held, shown)
        return out
    if resume is not None and (out / CHECKPOINT).is_file():
        way = "pass --resume to continue it or --overwrite to replace it"
    elif resume is not None:
        way = f"it has no {CHECKPOINT} to resume from; pass --overwrite to replace it"
    else:
        way = "pass --overwrite to replace it"
    raise UsageError(f"--out {out} is not empty ({shown}): {way}, or choose another --out; nothing was changed")


def _check_replaceable(out: Path, held: list[str], shown: str) -> None:
    """--overwrite deletes what `out` holds: only an esper run's directory, never one that
    holds the working directory or the home directory."""
    here, where = Path.cwd().resolve(), out.resolve()
    if where == Path.home().resolve() or where == here or where in here.parents:
        raise UsageError(f"--overwrite would delete what {out} holds: it is, or holds, the working or home directory; choose another --out")
    if not RUN_FILES & set(held):
        raise UsageError(
            f"--out {out} holds {shown}, which is not an esper run: --overwrite replaces only a run's directory; "
            "choose another --out; nothing was changed"
        )


def clear_out_dir(out: Path) -> None:
    """Delete what the run directory `out` holds (--overwrite, checked by `check_out_dir`)."""
    if not out.is_dir():
        return
    for entry in out.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def split_sizes(data) -> str:
    """What each split of `data` (esper.data.splits.DataSplits) holds, e.g. 'train 5,400, validation 600, test 2,000 images'."""
    what = "images" if data.unit == "image" else "sequences"
    return f"train {len(data.train):,}, validation {len(data.val):,}, test {len(data.test):,} {what}"


def check_host_fits(model: torch.nn.Module, example: torch.Tensor | None, data) -> torch.Tensor:
    """A forward pass of the host on the data's examples: it must give the logits the task
    needs (one per class, or per position and token). Returns the example input to instrument with."""
    from esper.simic.tasks import task_for

    if example is None or example.shape[1:] != data.train.x.shape[1:] or example.dtype != data.train.x.dtype:
        example = data.train.x[:2].cpu()
    try:
        with eval_mode(model), torch.no_grad():
            out = model(example)
    except Exception as e:
        what = "images" if data.unit == "image" else "token sequences"
        raise UsageError(f"the host fails on the data's {what} {tuple(example.shape)}: {type(e).__name__}: {e}") from e
    try:
        task_for(data.train.y).check_output(out, example, data)
    except ValueError as e:
        raise UsageError(f"{data.name}: {e}") from e
    return example


def join_ranks(cfg: TrainConfig, device: torch.device):
    """Under torchrun, join the job (esper.simic.distributed.start): the config records
    the world size and each rank gets its device. Returns (cfg, ranks, device)."""
    from esper.simic.distributed import start

    ranks, device = start(device, cfg.dist_timeout)
    return dataclasses.replace(cfg, world_size=ranks.world_size), ranks, device
