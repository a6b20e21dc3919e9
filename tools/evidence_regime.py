"""The evidence benchmark's regimes: each scale's data, host and training settings, and the
data set as another machine can check it (tools/evidence.py runs the protocol on them)."""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import torch

from esper.data.splits import DataSplits, TensorData, load_data
from esper.simic.env import EnvConfig
from esper.simic.rewards import RewardConfig

ROOT = Path(__file__).resolve().parents[1]
CIFAR_ARCHIVE = ROOT.parent / "shared" / "data" / "cifar10-jpg.tar.gz"
BLUEPRINTS = ["attention", "conv_enhance", "depthwise", "norm"]  # every blueprint of a conv slot
BLENDS = ["linear", "sigmoid", "gated"]


@dataclass
class Scale:
    """One size of the protocol: the regime every arm trains in, and how much of it to run."""

    name: str
    data: str
    train_images: int
    val_images: int
    test_images: int | None  # None: the whole test split
    width: int  # HostCNN channels of the first block
    deep_blocks: int  # blocks of the transfer host
    seeds: int  # evaluation seeds 0..seeds-1
    device: str = "cpu"
    env: EnvConfig = field(default_factory=EnvConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)


def _env(**kw) -> EnvConfig:
    return EnvConfig(**{"decisions_per_epoch": 2, "blend_steps": 2, "contribution_samples": 500, "eval_batch_size": 1000, "lr": 2e-3, **kw})


# The regime: a narrow HostCNN that underfits CIFAR-10 in this budget, so a bigger model
# has room to be better (the headroom table says how much), two decisions per epoch so a
# seed can germinate early and blend within an epoch, and a reward that grants growth up
# to the host's own size for free and charges for more.
SCALES = {
    "smoke": Scale(
        "smoke",
        "synthetic",
        400,
        200,
        200,
        8,
        4,
        2,
        env=_env(epochs=2, batch_size=64),
        reward=RewardConfig(param_budget=1.0),
    ),
    "cpu": Scale(
        "cpu",
        str(CIFAR_ARCHIVE),
        10_000,
        2_000,
        None,
        16,
        5,
        5,
        env=_env(epochs=8, batch_size=128, channels_last=True),
        reward=RewardConfig(param_budget=1.0),
    ),
    "gpu": Scale(
        "gpu",
        str(CIFAR_ARCHIVE),
        45_000,
        5_000,
        None,
        32,
        5,
        10,
        device="cuda",
        env=_env(epochs=15, batch_size=256, augment=True),
        reward=RewardConfig(param_budget=1.0),
    ),
}
STATIC_CANDIDATES = {  # name -> (blueprint, which slots)
    "conv_enhance@deepest": ("conv_enhance", "deepest"),
    "conv_enhance@all": ("conv_enhance", "all"),
    "depthwise@all": ("depthwise", "all"),
    "attention@all": ("attention", "all"),
}


def _subset(split: TensorData, n: int | None, seed: int) -> TensorData:
    if n is None or n >= len(split):
        return split
    keep = torch.randperm(len(split), generator=torch.Generator().manual_seed(seed))[:n].sort().values
    return TensorData(split.x[keep], split.y[keep])


def load_regime_data(scale: Scale, root: str) -> tuple[DataSplits, dict]:
    """The benchmark's splits: a fixed random subset of the training images, a fixed
    validation subset (evaluated every decision, so kept small), and the test split; and
    the data set's record (`dataset_record`)."""
    # The synthetic task is generated at the size asked for; a real dataset is loaded whole.
    total = scale.train_images + scale.val_images
    synthetic = scale.data == "synthetic"
    data = load_data(
        scale.data,
        root=root,
        seed=0,
        progress=True,
        limit=total if synthetic else None,
        val_fraction=scale.val_images / total if synthetic else 0.1,
    )
    splits = dataclasses.replace(
        data,
        train=_subset(data.train, scale.train_images, 1),
        val=_subset(data.val, scale.val_images, 2),
        test=_subset(data.test, scale.test_images, 3),
    )
    return splits, dataset_record(scale.data, data.name, {"seed": 0, "limit": total})


def dataset_record(spec: str, name: str, generated_with: dict) -> dict:
    """The data set as another machine can check it: the synthetic task by its name and the
    load_data arguments it is generated from; a file or directory by its name and sha256 (a
    path would name only the machine that ran the benchmark)."""
    if spec == "synthetic":
        return {"name": name, **generated_with}
    path = Path(spec).expanduser()
    return {"name": name, "file": path.name, "sha256": sha256_of(path)} if path.exists() else {"name": name}


def sha256_of(path: Path, chunk: int = 1 << 20) -> str:
    """The sha256 of a file's bytes (what `sha256sum` prints), read in chunks; of a directory,
    of its files' relative paths and bytes in sorted order."""
    digest = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for f in files:
        if f != path:
            digest.update(f.relative_to(path).as_posix().encode() + b"\0")
        with open(f, "rb") as stream:
            while block := stream.read(chunk):
                digest.update(block)
    return digest.hexdigest()
