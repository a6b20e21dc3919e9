"""Run files: every save goes through one atomic write."""

from __future__ import annotations

import torch

from esper.runs.files import save_atomic, write_atomic


def test_write_atomic_replaces_the_file_and_leaves_nothing_beside_it(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("old\n")
    write_atomic(path, lambda f: f.write(b"new\n"))
    assert path.read_text() == "new\n"
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.jsonl"]


def test_save_atomic_round_trips_through_torch_load(tmp_path):
    path = tmp_path / "checkpoint.pt"
    save_atomic({"step": 3, "w": torch.arange(4)}, path)
    blob = torch.load(path, weights_only=True)
    assert blob["step"] == 3 and torch.equal(blob["w"], torch.arange(4))
