"""Sequence data: text files and the synthetic recall task."""

import pytest
import torch

from esper.data.sequences import IGNORE
from esper.data.splits import load_data
from esper.leyline import DataError

TEXT = "".join(f"line {i}: the quick brown fox jumps over the lazy dog.\n" for i in range(40))


@pytest.fixture
def text_file(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text(TEXT, encoding="utf-8")
    return path


def decode(data, ids):
    return "".join(data.classes[i] for i in ids.tolist())


def test_text_is_split_into_contiguous_blocks_of_next_character_windows(text_file):
    data = load_data(f"text:{text_file}", context=16, val_fraction=0.1)
    assert data.unit == "character" and data.num_classes == len(set(TEXT)) and data.classes == sorted(set(TEXT))
    assert data.train.x.shape[1] == 16 and data.train.x.dtype == torch.int64
    assert torch.equal(data.train.x[:, 1:], data.train.y[:, :-1])  # y is x shifted by one
    held = int(len(TEXT) * 0.1)
    blocks = {"train": TEXT[: len(TEXT) - 2 * held], "val": TEXT[len(TEXT) - 2 * held : -held], "test": TEXT[-held:]}
    for name, block in blocks.items():
        split = getattr(data, name)
        stride = 2 if name == "train" else 16  # training windows overlap (every T // 8), the others do not
        assert len(split) == (len(block) - 17) // stride + 1
        for i in (0, len(split) - 1):
            assert decode(data, split.x[i]) + decode(data, split.y[i][-1:]) == block[i * stride : i * stride + 17]
    assert len(load_data(f"text:{text_file}", context=16, limit=7).train) == 7


def test_bytes_give_a_256_token_vocabulary(tmp_path):
    path = tmp_path / "bin.dat"
    path.write_bytes(bytes(range(256)) * 4)
    data = load_data(f"bytes:{path}", context=8)
    assert data.unit == "byte" and data.num_classes == 256
    assert data.train.x[0].tolist() == list(range(8))


@pytest.mark.parametrize(
    "case, message",
    [
        ("missing", "no text file at"),
        ("empty", "is empty"),
        ("short", "too few for a context of 64.*at least 650.*shorter --context"),
        ("latin1", "not UTF-8 text.*use bytes:"),
        ("nopath", "names no file"),
    ],
)
def test_bad_text_gets_one_clear_line(tmp_path, case, message):
    path = tmp_path / "t.txt"
    if case == "empty":
        path.write_text("")
    elif case == "short":
        path.write_text("x" * 300)
    elif case == "latin1":
        path.write_bytes("caf\xe9".encode("latin-1") * 100)
    spec = "text:" if case == "nopath" else f"text:{path}"
    with pytest.raises(DataError, match=message) as info:
        load_data(spec)
    assert "\n" not in str(info.value)


def test_recall_scores_only_the_answers_and_is_deterministic():
    data = load_data("seq-synthetic", context=16, limit=50, seed=3)
    again = load_data("seq-synthetic", context=16, limit=50, seed=3)
    assert torch.equal(data.train.x, again.train.x) and not torch.equal(
        data.train.x, load_data("seq-synthetic", context=16, limit=50).train.x
    )
    x, y = data.train.x, data.train.y
    assert x.shape == y.shape == (45, 16) and data.num_classes == 64 and len(data.val) == 5
    scored = y != IGNORE
    assert scored.sum(1).eq(4).all() and scored[:, 8::2].all()  # the token after each repeated key
    for row_x, row_y in zip(x[:5], y[:5]):
        pairs = dict(zip(row_x[:8:2].tolist(), row_x[1:8:2].tolist()))
        assert len(pairs) == 4  # distinct keys
        assert [pairs[k] for k in row_x[8::2].tolist()] == row_y[8::2].tolist() == row_x[9::2].tolist()
    with pytest.raises(DataError, match="multiple of 4"):
        load_data("seq-synthetic", context=10)


def test_tokens_are_never_augmented(text_file):
    data = load_data(f"text:{text_file}", context=16)
    with pytest.raises(DataError, match="augment crops and flips images"):
        next(data.train.batches(4, augment=True))
    x, y = next(data.train.batches(4, shuffle=True, generator=torch.Generator().manual_seed(0)))
    assert x.shape == y.shape == (4, 16)
