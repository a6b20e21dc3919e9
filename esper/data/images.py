"""Where esper's images come from: the synthetic task, CIFAR-10 and ImageFolder trees or archives.

Every source yields uint8 images (N×3×H×W) with int64 labels, split into named parts
("train" and "test", or "all" for a folder that has no such split). Decoded real images
are cached as .pt files under the cache root, so only the first load pays for decoding.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import shutil
import tarfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import torch
from PIL import Image
from torchvision.datasets import CIFAR10

from esper.leyline import DataError
from esper.runs.files import save_atomic
from esper.runs.metrics import progress_bar

IMAGE_SIZE = 32
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".zip")
# Bump when the cached layout or decoding changes, so stale caches are not read.
_CACHE_VERSION = 1


@dataclass
class RawImages:
    """A dataset's undivided uint8 images and labels, by part name, with its class names."""

    parts: dict[str, tuple[torch.Tensor, torch.Tensor]]
    classes: list[str]


# --------------------------------------------------------------------------- synthetic

SYNTHETIC_CLASSES = (
    ("disc", 0, "red"),
    ("disc", 90, "blue"),
    ("square", 45, "red"),
    ("square", 135, "green"),
    ("ring", 0, "green"),
    ("ring", 90, "yellow"),
    ("cross", 45, "blue"),
    ("cross", 135, "yellow"),
    ("triangle", 0, "blue"),
    ("triangle", 90, "green"),
)
_PALETTE = {
    "red": (0.8, 0.25, 0.2),
    "green": (0.25, 0.7, 0.3),
    "blue": (0.25, 0.35, 0.85),
    "yellow": (0.8, 0.75, 0.2),
}


def _disc(u, v):
    return torch.hypot(u, v) - 1.0


def _square(u, v):
    return torch.maximum(u.abs(), v.abs()) - 0.8


def _ring(u, v):
    return (torch.hypot(u, v) - 0.72).abs() - 0.28


def _cross(u, v):
    a, b = u.abs(), v.abs()
    return torch.minimum(torch.maximum(a - 1.0, b - 0.32), torch.maximum(b - 1.0, a - 0.32))


def _triangle(u, v):
    return torch.maximum(-v - 0.5, 0.866 * u.abs() + 0.5 * v - 0.5)


# Signed distance to each shape's outline, in units of the object's radius.
_SHAPES = {"disc": _disc, "square": _square, "ring": _ring, "cross": _cross, "triangle": _triangle}
# Rendering in chunks keeps the per-pixel temporaries cache-sized; whole-set tensors ran ~5x slower.
_CHUNK = 512


def _rand(g: torch.Generator, n: int, lo: float, hi: float) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, 1, 1, generator=g)


def _object(g, grid, shape_ids, theta, colour, radius):
    """Coverage mask (n×1×H×W) and striped colour (n×3×H×W) of one randomly placed object per image."""
    xs, ys = grid
    n = shape_ids.shape[0]
    cx, cy = _rand(g, n, -0.55, 0.55), _rand(g, n, -0.55, 0.55)
    r = _rand(g, n, *radius)
    rho = _rand(g, n, 0.0, 2 * math.pi)
    dx, dy = xs - cx, ys - cy
    u = (dx * rho.cos() + dy * rho.sin()) / r
    v = (dy * rho.cos() - dx * rho.sin()) / r
    dist = torch.empty_like(u)
    for k, sdf in enumerate(_SHAPES.values()):
        sel = shape_ids == k
        dist[sel] = sdf(u[sel], v[sel])
    # Scaled so the edge blends over about one pixel, which anti-aliases the outline.
    mask = torch.sigmoid(-dist * r * (0.75 * xs.shape[-1]))
    freq, phase = _rand(g, n, 2.0, 4.5), _rand(g, n, 0.0, 2 * math.pi)
    stripes = torch.sin(2 * math.pi * freq * (xs * theta.cos() + ys * theta.sin()) + phase)
    contrast = _rand(g, n, 0.25, 0.5)
    shade = 1 - contrast + contrast * stripes
    return mask.unsqueeze(1), colour.view(n, 3, 1, 1) * shade.unsqueeze(1)


def _render(y: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    n = y.shape[0]
    line = (torch.arange(IMAGE_SIZE) + 0.5) / IMAGE_SIZE * 2 - 1
    grid = torch.meshgrid(line, line, indexing="xy")
    shape_of = torch.tensor([list(_SHAPES).index(s) for s, _, _ in SYNTHETIC_CLASSES])
    angle_of = torch.tensor([math.radians(a) for _, a, _ in SYNTHETIC_CLASSES])
    colour_of = torch.tensor([_PALETTE[c] for _, _, c in SYNTHETIC_CLASSES])

    def instance(k, radius):
        theta = angle_of[k].view(n, 1, 1) + math.radians(20) * torch.randn(n, 1, 1, generator=g)
        colour = (colour_of[k] + 0.12 * torch.randn(n, 3, generator=g)).clamp(0, 1)
        return _object(g, grid, shape_of[k], theta, colour, radius)

    def decoy():
        other = (y + torch.randint(1, len(SYNTHETIC_CLASSES), (n,), generator=g)) % len(SYNTHETIC_CLASSES)
        return instance(other, (0.2, 0.4))

    xs, ys = grid
    theta, freq, phase = _rand(g, n, 0, math.pi), _rand(g, n, 1.0, 4.0), _rand(g, n, 0, 2 * math.pi)
    waves = torch.sin(2 * math.pi * freq * (xs * theta.cos() + ys * theta.sin()) + phase).unsqueeze(1)
    lo, hi = torch.rand(n, 3, 1, 1, generator=g), torch.rand(n, 3, 1, 1, generator=g)
    img = torch.lerp(lo, hi, 0.5 + 0.5 * torch.rand(n, 1, 1, 1, generator=g) * waves)
    for _ in range(2):
        mask, fg = decoy()
        img.lerp_(fg, mask)
    mask, fg = instance(y, (0.35, 0.6))
    img.lerp_(fg, mask)
    mask, fg = decoy()
    img.lerp_(fg, mask * (torch.rand(n, 1, 1, 1, generator=g) < 0.4))
    img = img * _rand(g, n, 0.75, 1.25).unsqueeze(1) + 0.12 * torch.randn(img.shape, generator=g)
    return (img.clamp(0, 1) * 255).round().to(torch.uint8)


def synthetic(seed: int, n_train: int = 10_000, n_test: int = 2_000) -> RawImages:
    """The synthetic 10-class task: 3×32×32 images, deterministic given seed.

    Each class is a conjunction of three factors: a shape (disc, square, ring, cross,
    triangle), the orientation of the stripes filling it (0/45/90/135 degrees) and a
    colour (red, green, blue, yellow); see SYNTHETIC_CLASSES. Every factor value is shared
    by two or three classes and any two classes differ in at least two factors, so no
    single cue names the class. Each image draws, per object, a random position, radius,
    rotation, stripe frequency, phase and contrast, with the orientation jittered by 20
    degrees and the colour by 0.12 per channel (so neighbouring classes overlap). The object
    sits on a random two-colour grating of random orientation, behind which lie two
    smaller decoys copied from other classes, and in front of which a third decoy is drawn
    with probability 0.4. A global gain of 0.75-1.25 and pixel noise of sigma 0.12 finish
    it. Classes are exactly balanced. Measured with seed 0 on the default 9,000 train and
    2,000 test images, against 10% chance: nearest class mean 18%, a linear classifier
    26%, and the 32/64/128-channel HostCNN 60% test (64% train, so still underfitting)
    after 4 epochs.
    """
    base = torch.Generator().manual_seed(seed)
    parts = {}
    threads = torch.get_num_threads()
    # Per-chunk ops are too small for intra-op threads to pay off, and on a busy machine
    # every op's thread barrier stalls: 12k images took 1.5 s on one thread, 30-70 s on two.
    torch.set_num_threads(1)
    try:
        for part, n in (("train", n_train), ("test", n_test)):
            g = torch.Generator().manual_seed(int(torch.randint(2**62, (1,), generator=base)))
            y = (torch.arange(n) % len(SYNTHETIC_CLASSES))[torch.randperm(n, generator=g)]
            x = torch.cat([_render(y[i : i + _CHUNK], g) for i in range(0, n, _CHUNK)])
            parts[part] = (x, y)
    finally:
        torch.set_num_threads(threads)
    return RawImages(parts, [f"{c}-{s}-{a}" for s, a, c in SYNTHETIC_CLASSES])


# --------------------------------------------------------------------------- files


def _save(raw: RawImages, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # Atomic, so a crash or a concurrent loader never sees half a cache.
    save_atomic({"parts": raw.parts, "classes": raw.classes}, path)


def _load(path: Path) -> RawImages:
    blob = torch.load(path, weights_only=True)
    return RawImages({k: tuple(v) for k, v in blob["parts"].items()}, blob["classes"])


def cifar10(root: Path, download: bool) -> RawImages:
    """CIFAR-10 through torchvision, converted once to a cached .pt under root."""
    cache = root / f"cifar10-v{_CACHE_VERSION}.pt"
    if cache.exists():
        return _load(cache)
    if not download and not (root / "cifar-10-batches-py").is_dir():
        raise DataError(
            f"CIFAR-10 is not in {root}; pass --download (download=True) to fetch it, "
            "or give the path of an ImageFolder directory or archive instead"
        )
    parts = {}
    for part in ("train", "test"):
        ds = CIFAR10(str(root), train=part == "train", download=download)
        parts[part] = (torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous(), torch.tensor(ds.targets))
    raw = RawImages(parts, list(ds.classes))
    _save(raw, cache)
    return raw


def decode_file(path: Path) -> torch.Tensor:
    """One image file as a 3×IMAGE_SIZE×IMAGE_SIZE uint8 RGB tensor, resized only if it differs."""
    try:
        with Image.open(path) as img:
            img = img.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise DataError(f"{path} is not a readable image: {e}") from None
    if img.size != (IMAGE_SIZE, IMAGE_SIZE):
        img = img.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BILINEAR)
    pixels = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8)
    return pixels.view(IMAGE_SIZE, IMAGE_SIZE, 3).permute(2, 0, 1)


def _visible(d: Path) -> list[Path]:
    return sorted(p for p in d.iterdir() if not p.name.startswith((".", "__MACOSX")))


def _find_root(top: Path) -> Path:
    """The folder holding train/ and test/ (or the class folders), below any lone wrapper folders."""
    d = top
    while not ((d / "train").is_dir() and (d / "test").is_dir()):
        entries = _visible(d)
        if len(entries) != 1 or not entries[0].is_dir() or _holds_images(entries[0]):
            break  # a lone folder of images is a class, not a wrapper
        d = entries[0]
    return d


def _holds_images(d: Path) -> bool:
    return any(p.suffix.lower() in IMAGE_SUFFIXES and p.is_file() for p in d.iterdir())


def _list_images(d: Path, classes: list[str] | None = None) -> tuple[list[Path], list[int], list[str]]:
    found = [p.name for p in _visible(d) if p.is_dir()]
    if classes is None:
        classes = found
    stray = sorted(set(found) - set(classes))
    if stray:
        raise DataError(f"{d} has class folders {stray} that the train split lacks")
    paths, labels = [], []
    for label, name in enumerate(classes):
        for p in sorted((d / name).rglob("*")):
            if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file():
                paths.append(p)
                labels.append(label)
    if not paths:
        raise DataError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in class folders under {d}")
    if len(set(labels)) < 2:
        raise DataError(
            f"{d} holds images of one class only ({classes[labels[0]]}): "
            "a classifier needs a folder of images for each of at least two classes"
        )
    return paths, labels, classes


def _layout(root: Path) -> tuple[dict[str, tuple[list[Path], list[int]]], list[str]]:
    """Image paths and labels by part name, and the class names, of an ImageFolder tree."""
    if (root / "train").is_dir() and (root / "test").is_dir():
        train_paths, train_labels, classes = _list_images(root / "train")
        test_paths, test_labels, _ = _list_images(root / "test", classes)
        return {"train": (train_paths, train_labels), "test": (test_paths, test_labels)}, classes
    paths, labels, classes = _list_images(root)
    return {"all": (paths, labels)}, classes


def _decode_all(layout: dict[str, tuple[list[Path], list[int]]], classes: list[str], progress: bool) -> RawImages:
    parts = {}
    for part, (paths, labels) in layout.items():
        x = torch.empty(len(paths), 3, IMAGE_SIZE, IMAGE_SIZE, dtype=torch.uint8)
        # Serial on purpose: a thread pool measured slower (decoding 32×32 files barely
        # releases the GIL), spawned workers spend as long importing torch as the whole
        # decode takes, and forking once torch's thread pools are running can deadlock.
        for i, p in enumerate(progress_bar(paths, desc=f"decoding {part}", unit="img", disable=not progress)):
            x[i] = decode_file(p)
        parts[part] = (x, torch.tensor(labels, dtype=torch.int64))
    return RawImages(parts, classes)


def image_folder(path: Path, cache_root: Path, progress: bool) -> RawImages:
    """An ImageFolder tree, decoded once and cached under a key of its files' names, sizes and times."""
    root = _find_root(path)
    layout, classes = _layout(root)
    digest = hashlib.sha1(f"v{_CACHE_VERSION}".encode())
    for paths, _ in layout.values():
        for p in paths:
            st = p.stat()
            digest.update(f"{p.relative_to(root)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    cache = cache_root / "folders" / f"{_safe(path.resolve().name)}-{digest.hexdigest()[:16]}.pt"
    if cache.exists():
        return _load(cache)
    raw = _decode_all(layout, classes, progress)
    _save(raw, cache)
    return raw


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)


def _check_member(archive: Path, name: str) -> None:
    p = PurePosixPath(name.replace("\\", "/"))
    if p.is_absolute() or ".." in p.parts or re.match(r"^[A-Za-z]:", name):
        raise DataError(f"refusing to unpack {archive}: member {name!r} would land outside the target folder")


def _unpack(archive: Path, dest: Path, progress: bool) -> None:
    bar = progress_bar(desc=f"unpacking {archive.name}", unit="file", disable=not progress)
    try:
        with bar:
            _extract(archive, dest, bar)
    except tarfile.FilterError as e:
        raise DataError(f"refusing to unpack {archive}: {e}") from e
    except (tarfile.TarError, zipfile.BadZipFile, zlib.error, EOFError, OSError) as e:
        kind = "zip" if archive.name.lower().endswith(".zip") else "tar"
        raise DataError(f"{archive} cannot be unpacked as a {kind} archive: {type(e).__name__}: {' '.join(str(e).split())}") from None


def _extract(archive: Path, dest: Path, bar) -> None:
    if archive.name.lower().endswith(".zip"):
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                _check_member(archive, info.filename)
                zf.extract(info, dest)
                bar.update()
    else:
        with tarfile.open(archive) as tf:
            for member in tf:
                _check_member(archive, member.name)
                # The "data" filter also refuses links out of dest and special files.
                tf.extract(member, dest, filter="data")
                bar.update()


def _remove_empty(d: Path, stop: Path) -> None:
    """Remove `d` and its parents below `stop` while they are empty, so a failed unpack leaves no trace."""
    while d != stop and d.is_relative_to(stop):
        try:
            d.rmdir()
        except OSError:  # not empty (or gone): what is left is not ours to remove
            return
        d = d.parent


def image_archive(archive: Path, cache_root: Path, progress: bool) -> RawImages:
    """An archived ImageFolder, unpacked and decoded once under a key of its name, size and time."""
    st = archive.stat()
    home = cache_root / "archives" / f"{_safe(archive.name)}-{st.st_size}-{st.st_mtime_ns}"
    cache = home / f"images-v{_CACHE_VERSION}.pt"
    if cache.exists():
        return _load(cache)
    files = home / "files"
    if not files.is_dir():
        partial = home / f"files.{os.getpid()}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        try:
            _unpack(archive, partial, progress)
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            _remove_empty(home, stop=cache_root.parent)
            raise
        # Renamed only once complete, so an interrupted unpack is redone rather than trusted.
        partial.rename(files)
    raw = _decode_all(*_layout(_find_root(files)), progress)
    _save(raw, cache)
    return raw
