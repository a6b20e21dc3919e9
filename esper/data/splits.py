"""The data the training code sees: normalized train/val/test tensors, batched on their own device.

Images come from esper.data.images, token sequences from esper.data.sequences."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from esper.data.images import ARCHIVE_SUFFIXES, DataError, RawImages, cifar10, image_archive, image_folder, synthetic
from esper.data.sequences import SEQUENCE_SPECS, is_sequence_spec, load_sequences

__all__ = ["DataError", "DataSplits", "TensorData", "crop_flip", "load_data"]

# Share of a folder without train/ and test/ that becomes the test split.
FOLDER_TEST_FRACTION = 0.2
_ACCEPTED = (
    "'synthetic', 'cifar10', an ImageFolder directory (with train/ and test/ or just class folders), "
    f"an archive of one ({', '.join(ARCHIVE_SUFFIXES)}), or a sequence task: {SEQUENCE_SPECS}"
)


@dataclass
class TensorData:
    """Examples and targets held whole, batched by indexing on their device: images
    (N×3×H×W float) and labels (N int64), or token ids (N×T int64) and next tokens (N×T)."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return self.y.shape[0]

    def to(self, device: torch.device | str) -> TensorData:
        return TensorData(self.x.to(device), self.y.to(device))

    def batches(
        self,
        batch_size: int,
        shuffle: bool = False,
        generator: torch.Generator | None = None,
        augment: bool = False,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """One epoch of (x, y) batches, the last one possibly short.

        shuffle draws a fresh order from generator (which must live on the data's device);
        augment applies a random 4-pixel-padded crop and horizontal flip to each image.
        """
        if augment and self.x.dim() != 4:
            raise DataError(
                f"augment crops and flips images (N×3×H×W); these examples are {tuple(self.x.shape[1:])} "
                "token sequences: train them without augment"
            )
        device = self.x.device
        n = len(self)
        order = torch.randperm(n, device=device, generator=generator) if shuffle else torch.arange(n, device=device)
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            x = self.x[idx]
            if augment:
                x = crop_flip(x, generator=generator)
            yield x, self.y[idx]


def crop_flip(x: torch.Tensor, pad: int = 4, generator: torch.Generator | None = None) -> torch.Tensor:
    """Each image cropped at a random offset from its zero-padded copy, and flipped left-right half the time."""
    b, _, h, w = x.shape
    device = x.device
    padded = F.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (b, 1), device=device, generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (b, 1), device=device, generator=generator)
    flip = torch.randint(0, 2, (b, 1), device=device, generator=generator).bool()
    rows = dy + torch.arange(h, device=device)
    cols = dx + torch.arange(w, device=device)
    cols = torch.where(flip, cols.flip(1), cols)
    batch = torch.arange(b, device=device).view(b, 1, 1)
    # Advanced indices split by the channel slice put the batch dims first: b×h×w×c.
    return padded[batch, :, rows.unsqueeze(2), cols.unsqueeze(1)].permute(0, 3, 1, 2).contiguous()


@dataclass
class DataSplits:
    """A dataset ready to train on: train and val (carved from train, seeded) and test, for
    reports only. For sequences num_classes is the vocabulary size, classes the token names."""

    train: TensorData
    val: TensorData
    test: TensorData
    num_classes: int
    classes: list[str]
    name: str
    unit: str = "image"  # what one prediction is about: an image, or a character, byte or token


def _stratified_pick(y: torch.Tensor, k: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Sorted indices of k examples drawn at random in proportion to each class, and of the rest."""
    n = y.shape[0]
    perm = torch.randperm(n, generator=generator)
    order = perm[torch.argsort(y[perm], stable=True)]
    counts = torch.bincount(y)
    starts = counts.cumsum(0) - counts
    labels = y[order]
    rank = torch.arange(n) - starts[labels]
    # Interleaving classes by relative rank makes every prefix of `chosen` class-proportional.
    chosen = order[torch.argsort((rank + 0.5) / counts[labels], stable=True)]
    return chosen[:k].sort().values, chosen[k:].sort().values


def _looks_like_path(spec: str) -> bool:
    """A spec written as a path (a folder or an archive), not a dataset's name."""
    return "/" in spec or "\\" in spec or spec.startswith(("~", ".")) or spec.lower().endswith(ARCHIVE_SUFFIXES)


def _raw(spec: str, root: Path, download: bool, seed: int, limit: int | None, progress: bool) -> tuple[RawImages, str]:
    if spec == "synthetic":
        # The test split is generated whole whatever the limit: it is drawn from its own generator,
        # so the training images are the same either way.
        return synthetic(seed, 10_000 if limit is None else min(limit, 10_000), 2_000), spec
    if spec == "cifar10":
        return cifar10(root, download), spec
    path = Path(spec).expanduser()
    if path.is_dir():
        return image_folder(path, root, progress), path.resolve().name
    if path.is_file() and path.name.lower().endswith(ARCHIVE_SUFFIXES):
        suffix = next(s for s in ARCHIVE_SUFFIXES if path.name.lower().endswith(s))
        return image_archive(path, root, progress), path.name[: -len(suffix)]
    if not path.exists() and _looks_like_path(spec):
        what = "file" if spec.lower().endswith(ARCHIVE_SUFFIXES) else "file or directory"
        raise DataError(f"no such {what}: {spec}")
    raise DataError(f"unknown dataset {spec!r}: expected {_ACCEPTED}")


def load_data(
    spec: str,
    *,
    root: str | Path = "~/.cache/esper",
    download: bool = False,
    val_fraction: float = 0.1,
    seed: int = 0,
    limit: int | None = None,
    device: torch.device | str = "cpu",
    progress: bool = True,
    context: int = 64,
) -> DataSplits:
    """Load a dataset by spec ('synthetic', 'cifar10', an ImageFolder directory or archive,
    or a sequence task: 'text:PATH', 'bytes:PATH', 'seq-synthetic').

    root holds downloads and decoded caches. limit caps the training pool (before the
    validation share is carved out); the test split is always whole. For text it caps the
    training windows. seed fixes the synthetic data, the subsets and the splits.
    Images are normalized with the train split's per-channel mean and std and placed on
    device. context is a sequence task's length in tokens.
    """
    if not 0 <= val_fraction < 1:
        raise DataError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if limit is not None and limit < 1:
        raise DataError(f"limit must be a positive number of examples, got {limit}")
    if is_sequence_spec(spec):
        seq = load_sequences(spec, context=context, val_fraction=val_fraction, seed=seed, limit=limit)
        train, val, test = (TensorData(x.to(device), y.to(device)) for x, y in (seq.parts[k] for k in ("train", "val", "test")))
        return DataSplits(train, val, test, len(seq.classes), seq.classes, seq.name, seq.unit)
    raw, name = _raw(spec, Path(root).expanduser(), download, seed, limit, progress)
    g = torch.Generator().manual_seed(seed)
    parts = dict(raw.parts)
    if "all" in parts:
        x, y = parts.pop("all")
        test, train = _stratified_pick(y, round(FOLDER_TEST_FRACTION * len(y)), g)
        parts = {"train": (x[train], y[train]), "test": (x[test], y[test])}
    (train_x, train_y), (test_x, test_y) = parts["train"], parts["test"]
    if limit is not None and limit < len(train_y):
        keep, _ = _stratified_pick(train_y, limit, g)
        train_x, train_y = train_x[keep], train_y[keep]
    val, train = _stratified_pick(train_y, round(val_fraction * len(train_y)), g)

    train_f = train_x[train].to(device).float()
    mean = train_f.mean(dim=(0, 2, 3)).view(3, 1, 1)
    # Floored so that a channel without variation (a tiny or degenerate set) cannot divide by zero.
    std = train_f.std(dim=(0, 2, 3)).clamp_min(1e-3).view(3, 1, 1)

    def normalized(x: torch.Tensor) -> torch.Tensor:
        return (x.to(device).float() - mean) / std

    return DataSplits(
        train=TensorData(train_f.sub_(mean).div_(std), train_y[train].to(device)),
        val=TensorData(normalized(train_x[val]), train_y[val].to(device)),
        test=TensorData(normalized(test_x), test_y.to(device)),
        num_classes=len(raw.classes),
        classes=list(raw.classes),
        name=name,
    )
