"""Datasets: the synthetic task, ImageFolder trees and archives, CIFAR-10's error, and batching."""

from __future__ import annotations

import io
import shutil
import tarfile
import time
import zipfile
from pathlib import Path

import pytest
import torch
from PIL import Image

import esper.data.images as images
from esper.data.splits import DataError, TensorData, crop_flip, load_data

CIFAR_JPG = Path("/work/shared/data/cifar10-jpg.tar.gz")
CLASS_COLOURS = {"cat": (220, 30, 30), "dog": (30, 220, 30), "eel": (30, 30, 220)}


def _rows(x: torch.Tensor) -> set[bytes]:
    return {row.numpy().tobytes() for row in x.flatten(1)}


# --------------------------------------------------------------------------- synthetic


@pytest.fixture(scope="module")
def synthetic():
    return load_data("synthetic", progress=False)


def test_synthetic_shapes_sizes_and_classes(synthetic):
    assert (len(synthetic.train), len(synthetic.val), len(synthetic.test)) == (9_000, 1_000, 2_000)
    for split in (synthetic.train, synthetic.val, synthetic.test):
        assert split.x.shape[1:] == (3, 32, 32) and split.x.dtype == torch.float32
        assert split.y.dtype == torch.int64 and split.y.shape == (len(split),)
    assert synthetic.num_classes == 10 and len(set(synthetic.classes)) == 10
    assert synthetic.name == "synthetic"
    # Normalized with the train split's own statistics.
    assert synthetic.train.x.mean(dim=(0, 2, 3)).abs().max() < 1e-3
    assert (synthetic.train.x.std(dim=(0, 2, 3)) - 1).abs().max() < 1e-3


def test_synthetic_classes_are_balanced(synthetic):
    assert torch.bincount(synthetic.train.y).tolist() == [900] * 10
    assert torch.bincount(synthetic.val.y).tolist() == [100] * 10
    assert torch.bincount(synthetic.test.y).tolist() == [200] * 10


def test_synthetic_splits_are_disjoint(synthetic):
    train, val, test = _rows(synthetic.train.x), _rows(synthetic.val.x), _rows(synthetic.test.x)
    assert (len(train), len(val), len(test)) == (9_000, 1_000, 2_000)
    assert not train & val and not train & test and not val & test


def test_synthetic_is_deterministic_given_seed():
    a = load_data("synthetic", seed=3, limit=500, progress=False)
    b = load_data("synthetic", seed=3, limit=500, progress=False)
    c = load_data("synthetic", seed=4, limit=500, progress=False)
    assert torch.equal(a.train.x, b.train.x) and torch.equal(a.val.y, b.val.y) and torch.equal(a.test.x, b.test.x)
    assert not torch.equal(a.train.x, c.train.x)
    assert (len(a.train), len(a.val), len(a.test)) == (450, 50, 2_000)


def test_limit_caps_the_training_images_only():
    """--limit is the training images (the validation share carved from them); the test split
    stays whole, so a small run is still judged on every test image."""
    small, full = load_data("synthetic", seed=0, limit=120, progress=False), load_data("synthetic", seed=0, limit=10_000, progress=False)
    assert (len(small.train), len(small.val), len(small.test)) == (108, 12, 2_000)
    assert torch.equal(small.test.y, full.test.y)  # the same test images, normalized by each run's own training statistics
    assert torch.bincount(small.test.y).tolist() == [200] * 10
    recall = load_data("seq-synthetic", context=16, limit=50, progress=False)
    assert (len(recall.train), len(recall.val), len(recall.test)) == (45, 5, 2_000)


def test_limit_leaves_a_folder_test_split_whole(tree, tmp_path):
    limited = load_data(str(tree), root=tmp_path / "cache", limit=6, progress=False)
    assert len(limited.train) + len(limited.val) == 6 and len(limited.test) == 6


def test_synthetic_is_neither_trivial_nor_noise(synthetic):
    train, test = synthetic.train, synthetic.test
    means = torch.stack([train.x[train.y == k].flatten(1).mean(0) for k in range(10)])
    nearest_mean = (torch.cdist(test.x.flatten(1), means).argmin(1) == test.y).float().mean().item()

    torch.manual_seed(0)
    linear = torch.nn.Linear(3 * 32 * 32, 10)
    opt = torch.optim.Adam(linear.parameters(), lr=1e-3)
    for x, y in train.batches(256, shuffle=True):
        loss = torch.nn.functional.cross_entropy(linear(x.flatten(1)), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        linear_acc = (linear(test.x.flatten(1)).argmax(1) == test.y).float().mean().item()
    # Chance is 0.10 (sd 0.007 on 2,000 images); measured ~0.18 and ~0.25.
    assert 0.13 < nearest_mean < 0.4
    assert 0.18 < linear_acc < 0.5


# --------------------------------------------------------------------------- ImageFolder


def _write_images(folder: Path, per_class: int, offset: int = 0) -> None:
    for name, colour in CLASS_COLOURS.items():
        (folder / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            shade = tuple(max(0, c - 10 * (i + offset)) for c in colour)
            if i == 0:
                # A differently sized JPEG, which has to be resized to 32×32.
                Image.new("RGB", (40, 24), shade).save(folder / name / f"{i}.jpg", quality=95)
            else:
                Image.new("RGB", (32, 32), shade).save(folder / name / f"{i}.png")


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "tiny"
    _write_images(root / "train", per_class=4)
    _write_images(root / "test", per_class=2, offset=5)
    return root


def _check_tiny(splits, name):
    assert splits.classes == ["cat", "dog", "eel"] and splits.num_classes == 3 and splits.name == name
    assert len(splits.train) + len(splits.val) == 12 and len(splits.val) == 3 and len(splits.test) == 6
    for split in (splits.train, splits.val, splits.test):
        assert split.x.shape[1:] == (3, 32, 32)
        # Each class's dominant channel survives decoding and normalization.
        channel = split.x.mean(dim=(2, 3)).argmax(1)
        assert torch.equal(channel, split.y)


def test_image_folder_directory_loads_and_reuses_its_cache(tree, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    first = load_data(str(tree), root=cache, val_fraction=0.25, progress=False)
    _check_tiny(first, "tiny")

    def refuse(path):
        raise AssertionError(f"decoded {path} again")

    monkeypatch.setattr(images, "decode_file", refuse)
    again = load_data(str(tree), root=cache, val_fraction=0.25, progress=False)
    assert torch.equal(first.train.x, again.train.x) and torch.equal(first.test.y, again.test.y)


def test_image_folder_cache_notices_changed_files(tree, tmp_path):
    cache = tmp_path / "cache"
    load_data(str(tree), root=cache, progress=False)
    Image.new("RGB", (32, 32), (200, 0, 0)).save(tree / "test" / "cat" / "extra.png")
    assert len(load_data(str(tree), root=cache, progress=False).test) == 7


@pytest.mark.parametrize("suffix", [".tar.gz", ".zip"])
def test_image_folder_archive_matches_directory(tree, tmp_path, monkeypatch, suffix):
    archive = tmp_path / f"tiny{suffix}"
    if suffix == ".zip":
        with zipfile.ZipFile(archive, "w") as zf:
            for path in sorted(tree.rglob("*")):
                zf.write(path, Path("wrapper") / path.relative_to(tree.parent))
    else:
        with tarfile.open(archive, "w:gz") as tf:
            tf.add(tree, arcname="wrapper/tiny")
    cache = tmp_path / "cache"
    packed = load_data(str(archive), root=cache, val_fraction=0.25, progress=False)
    _check_tiny(packed, "tiny")
    plain = load_data(str(tree), root=tmp_path / "other", val_fraction=0.25, progress=False)
    assert torch.equal(packed.train.x, plain.train.x) and torch.equal(packed.test.x, plain.test.x)

    def refuse(*args):
        raise AssertionError("unpacked or decoded again")

    monkeypatch.setattr(images, "decode_file", refuse)
    monkeypatch.setattr(images, "_unpack", refuse)
    again = load_data(str(archive), root=cache, val_fraction=0.25, progress=False)
    assert torch.equal(packed.val.x, again.val.x)


def test_single_image_folder_is_split_by_seed(tmp_path):
    _write_images(tmp_path / "flat", per_class=10)
    a = load_data(str(tmp_path / "flat"), root=tmp_path / "cache", val_fraction=0.0, seed=1, progress=False)
    b = load_data(str(tmp_path / "flat"), root=tmp_path / "cache", val_fraction=0.0, seed=1, progress=False)
    c = load_data(str(tmp_path / "flat"), root=tmp_path / "cache", val_fraction=0.0, seed=2, progress=False)
    assert (len(a.train), len(a.val), len(a.test)) == (24, 0, 6)
    assert torch.bincount(a.test.y).tolist() == [2, 2, 2]
    assert torch.equal(a.test.x, b.test.x) and not torch.equal(a.test.x, c.test.x)


@pytest.mark.parametrize("evil", ["../evil.png", "/tmp/evil.png", "tiny/../../evil.png"])
def test_archive_with_escaping_member_is_refused(tree, tmp_path, evil):
    archive = tmp_path / "evil.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        tf.add(tree, arcname="tiny")
        payload = b"not an image"
        info = tarfile.TarInfo(evil)
        info.size = len(payload)
        tf.addfile(info, io.BytesIO(payload))
    with pytest.raises(DataError, match="refusing to unpack"):
        load_data(str(archive), root=tmp_path / "cache", progress=False)
    assert not list(tmp_path.rglob("evil.png")) and not Path("/tmp/evil.png").exists()
    assert not list((tmp_path / "cache").rglob("files"))


# --------------------------------------------------------------------------- errors


def test_cifar10_without_files_or_download_says_what_to_do(tmp_path):
    with pytest.raises(DataError, match="--download"):
        load_data("cifar10", root=tmp_path, progress=False)


@pytest.mark.parametrize("spec", ["mnist", "cifar-100", __file__])
def test_unknown_spec_lists_the_accepted_forms(spec):
    with pytest.raises(ValueError, match="'synthetic', 'cifar10', an ImageFolder directory"):
        load_data(spec, progress=False)


@pytest.mark.parametrize(
    "spec, message",
    [
        ("/nope/cifar.tar.gz", "no such file: /nope/cifar.tar.gz"),
        ("cifar.zip", "no such file: cifar.zip"),
        ("no/such/dir", "no such file or directory: no/such/dir"),
        ("./no-such-images", "no such file or directory: ./no-such-images"),
    ],
)
def test_a_missing_path_is_said_to_be_missing(spec, message):
    with pytest.raises(DataError) as info:
        load_data(spec, progress=False)
    assert str(info.value) == message


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="val_fraction"):
        load_data("synthetic", val_fraction=1.0)
    with pytest.raises(ValueError, match="limit"):
        load_data("synthetic", limit=0)


# --------------------------------------------------------------------------- batching


def _numbered(n: int) -> TensorData:
    # Image i holds distinct values, so any crop or flip can be traced back to it.
    x = torch.arange(n * 3 * 8 * 8, dtype=torch.float32).view(n, 3, 8, 8) + 1
    return TensorData(x, torch.arange(n))


def test_shuffled_batches_cover_every_example_once():
    data = _numbered(23)
    g = torch.Generator().manual_seed(0)
    epochs = [list(data.batches(5, shuffle=True, generator=g)) for _ in range(2)]
    for batches in epochs:
        assert [len(y) for _, y in batches] == [5, 5, 5, 5, 3]
        seen = torch.cat([y for _, y in batches])
        assert sorted(seen.tolist()) == list(range(23))
        assert all(torch.equal(x, data.x[y]) for x, y in batches)
    assert not torch.equal(torch.cat([y for _, y in epochs[0]]), torch.cat([y for _, y in epochs[1]]))
    plain = torch.cat([y for _, y in data.batches(5)])
    assert torch.equal(plain, torch.arange(23))


def test_augment_is_a_padded_crop_or_flip_of_each_image():
    data = _numbered(64)
    g = torch.Generator().manual_seed(0)
    ((x, y),) = list(data.batches(64, shuffle=True, generator=g, augment=True))
    assert x.shape == (64, 3, 8, 8) and x.is_contiguous()
    padded = torch.nn.functional.pad(data.x, (4, 4, 4, 4))
    moved = flipped = 0
    for img, label in zip(x, y):
        crops = {(dy, dx): padded[label, :, dy : dy + 8, dx : dx + 8] for dy in range(9) for dx in range(9)}
        views = {(*key, False): crop for key, crop in crops.items()}
        views.update({(*key, True): crop.flip(-1) for key, crop in crops.items()})
        match = [key for key, view in views.items() if torch.equal(view, img)]
        assert len(match) == 1
        dy, dx, flip = match[0]
        moved += (dy, dx) != (4, 4)
        flipped += flip
    assert moved > 48 and 16 < flipped < 48


def test_crop_flip_keeps_shape_and_dtype():
    x = torch.randn(5, 3, 32, 32)
    out = crop_flip(x, generator=torch.Generator().manual_seed(1))
    assert out.shape == x.shape and out.dtype == x.dtype and not torch.equal(out, x)


def test_to_moves_both_tensors():
    data = _numbered(4).to("cpu")
    assert data.x.device.type == "cpu" and len(data) == 4


# --------------------------------------------------------------------------- real data


@pytest.mark.slow
@pytest.mark.skipif(not CIFAR_JPG.exists(), reason=f"{CIFAR_JPG} is absent")
def test_cifar10_jpeg_archive(tmp_path):
    start = time.perf_counter()
    try:
        first = load_data(str(CIFAR_JPG), root=tmp_path, progress=False)
        decoded = time.perf_counter()
        cached = load_data(str(CIFAR_JPG), root=tmp_path, progress=False)
        done = time.perf_counter()
    finally:
        # 60,000 unpacked files would otherwise slow whichever later pytest run prunes them.
        shutil.rmtree(tmp_path, ignore_errors=True)
    print(f"first load {decoded - start:.1f}s, cached load {done - decoded:.1f}s")
    assert len(first.train) + len(first.val) == 50_000 and len(first.val) == 5_000
    assert len(first.test) == 10_000
    assert first.num_classes == 10 and first.classes == [
        "airplane",
        "automobile",
        "bird",
        "cat",
        "deer",
        "dog",
        "frog",
        "horse",
        "ship",
        "truck",
    ]
    assert torch.bincount(first.test.y).tolist() == [1_000] * 10
    assert first.train.x.shape[1:] == (3, 32, 32)
    assert torch.equal(first.val.x, cached.val.x)
    assert done - decoded < (decoded - start) / 2
