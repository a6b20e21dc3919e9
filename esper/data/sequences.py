"""Where esper's sequences come from: a text file as language modelling, and synthetic recall.

Each source yields x (N, T) int64 token ids and y (N, T), the token that follows each
position (IGNORE where a position is not scored), split into train, val and test:

    text:PATH      the file's characters (UTF-8) as tokens; bytes:PATH, its bytes. The
                   token stream is split into three contiguous blocks, train (the first
                   1 - 2 v), validation (the next v) and test (the last v), v = val_fraction,
                   so no window crosses from one block into another; each block is cut into
                   windows w of T + 1 tokens, x = w[:-1], y = w[1:]. Validation and test
                   windows do not overlap; training windows start every T // 8 tokens, which
                   gets more of them out of a small file.
    seq-synthetic  associative recall (see `recall`), generated from the seed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch

from esper.leyline import DataError

IGNORE = -100  # a target position that is not scored (F.cross_entropy's ignore_index)
SEQUENCE_SPECS = "'text:PATH' (characters), 'bytes:PATH' (bytes) or 'seq-synthetic'"
RECALL_KEYS = RECALL_VALUES = 32


@dataclass
class RawSequences:
    """Token windows by part name ("train", "val", "test"), the token names, and what a token is."""

    parts: dict[str, tuple[torch.Tensor, torch.Tensor]]
    classes: list[str]
    unit: str  # "character", "byte" or "token": what one prediction is about
    name: str


def is_sequence_spec(spec: str) -> bool:
    return spec == "seq-synthetic" or spec.startswith(("text:", "bytes:"))


def load_sequences(spec: str, *, context: int, val_fraction: float, seed: int, limit: int | None) -> RawSequences:
    """The sequence task a spec names ('text:PATH', 'bytes:PATH' or 'seq-synthetic');
    `limit` caps the training windows."""
    if context < 2:
        raise DataError(f"the context length must be at least 2 tokens, got {context}")
    if spec == "seq-synthetic":
        # The test sequences are drawn after the training and validation ones: the whole test split, whatever the limit.
        return recall(seed, context, 10_000 if limit is None else min(limit, 10_000), 2_000, val_fraction)
    kind, _, path = spec.partition(":")
    if not path:
        raise DataError(f"{spec!r} names no file: give {kind}:PATH, e.g. {kind}:README.md")
    return text(Path(path).expanduser(), context, val_fraction, limit, byte_level=kind == "bytes")


def text(path: Path, context: int, val_fraction: float, limit: int | None, byte_level: bool = False) -> RawSequences:
    """A text file as next-token prediction over its characters (or bytes): see the module docstring."""
    if not path.is_file():
        raise DataError(f"no text file at {path}: give the path of a UTF-8 text file")
    raw = path.read_bytes()
    if not raw:
        raise DataError(f"{path} is empty: a language-modelling task needs text to learn from")
    if byte_level:
        ids, classes, unit = torch.frombuffer(bytearray(raw), dtype=torch.uint8).long(), [chr(b) for b in range(256)], "byte"
    else:
        try:
            chars = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise DataError(
                f"{path} is not UTF-8 text ({e.reason} at byte {e.start}): use bytes:{path} to model its bytes instead"
            ) from None
        classes, unit = sorted(set(chars)), "character"
        index = {c: i for i, c in enumerate(classes)}
        ids = torch.tensor([index[c] for c in chars], dtype=torch.long)
    if not 0 < val_fraction < 0.5:
        raise DataError(f"val_fraction must be in (0, 0.5) for text (validation and test take that share each), got {val_fraction}")
    n = len(ids)
    held = math.floor(n * val_fraction)
    if min(held, n - 2 * held) < context + 1:
        need = math.ceil((context + 1) / min(val_fraction, 1 - 2 * val_fraction))
        raise DataError(
            f"{path} has {n:,} {unit}s, too few for a context of {context}: the training, validation and "
            f"test blocks ({1 - 2 * val_fraction:.0%}, {val_fraction:.0%}, {val_fraction:.0%}) need "
            f"{context + 1} {unit}s apiece, so at least {need:,} in all; use a shorter --context or a longer file"
        )
    blocks = {"train": ids[: n - 2 * held], "val": ids[n - 2 * held : n - held], "test": ids[n - held :]}
    parts = {name: _windows(block, context, max(1, context // 8) if name == "train" else context) for name, block in blocks.items()}
    if limit is not None:
        parts["train"] = tuple(t[:limit] for t in parts["train"])
    return RawSequences(parts, classes, unit, f"{path.name} ({unit}s)")


def _windows(stream: torch.Tensor, context: int, stride: int) -> tuple[torch.Tensor, torch.Tensor]:
    w = stream.unfold(0, context + 1, stride)
    return w[:, :-1].contiguous(), w[:, 1:].contiguous()


def recall(seed: int, context: int, n_train: int, n_test: int, val_fraction: float) -> RawSequences:
    """Associative recall: P = T/4 key-value pairs, then the same keys asked again in a new
    order, each followed by its value. Keys are 32 token ids (0..31), values 32 more
    (32..63); within a sequence the keys are distinct. Only the answers are scored (the
    token after each repeated key), so chance is 1/32, copying any value of the sequence
    gets 1/P, and a model that looks its key up gets every one:

        k1 v1 k2 v2 ... kP vP  q1 a1 ... qP aP      y = a_j after q_j, IGNORE elsewhere

    Measured with seed 0: TinyGPT (64 wide, 4 blocks, AdamW 2e-3, batch 128) trained for 4
    epochs on 5,400 sequences of 32 tokens (P = 8) reaches 15% validation accuracy, just
    above copying (12.5%) and far from looking up (100%): it underfits. Deterministic given seed.
    """
    if context % 4 or not 8 <= context <= 4 * RECALL_KEYS:
        raise DataError(f"seq-synthetic needs a context that is a multiple of 4 between 8 and {4 * RECALL_KEYS}, got {context}")
    pairs = context // 4
    g = torch.Generator().manual_seed(seed)

    def part(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        keys = torch.rand(n, RECALL_KEYS, generator=g).argsort(dim=1)[:, :pairs]
        values = torch.randint(RECALL_KEYS, RECALL_KEYS + RECALL_VALUES, (n, pairs), generator=g)
        order = torch.rand(n, pairs, generator=g).argsort(dim=1)
        asked, answers = keys.gather(1, order), values.gather(1, order)
        x = torch.cat([torch.stack(kv, dim=2).flatten(1) for kv in ((keys, values), (asked, answers))], dim=1)
        y = torch.full_like(x, IGNORE)
        y[:, 2 * pairs :: 2] = answers
        return x, y

    n_val = max(1, round(n_train * val_fraction))
    parts = {"train": part(n_train - n_val), "val": part(n_val), "test": part(n_test)}
    classes = [f"k{i}" for i in range(RECALL_KEYS)] + [f"v{i}" for i in range(RECALL_VALUES)]
    return RawSequences(parts, classes, "token", "seq-synthetic")
