"""`esper train` never deletes or shortens a run it did not read a checkpoint for."""

from __future__ import annotations

import pytest
import torch

from esper.cli.main import main
from esper.leyline import RunError
from esper.simic.training import TrainConfig, Trainer
from tests.helpers import ROOT, HostCNN

TRAIN = ["train", "--host", str(ROOT / "examples/host_cnn.py"), "--episodes", "1", "--limit", "60", "--no-progress"]


def _finished_run_without_checkpoint(out):
    """What a finished run leaves once its checkpoint.pt is gone; returns every file's bytes."""
    out.mkdir()
    (out / "metrics.jsonl").write_text('{"kind": "episode", "episode": 0}\n' * 3)
    torch.save({"format": "esper-tamiyo", "policy": {}}, out / "tamiyo.pt")
    (out / "config.yaml").write_text("episodes: 3\n")
    return _contents(out)


def _contents(out):
    return {p.name: p.read_bytes() for p in sorted(out.iterdir())}


@pytest.mark.parametrize("resume", [True, False])
def test_a_used_directory_without_checkpoint_is_refused_untouched(tmp_path, capsys, resume):
    out = tmp_path / "run"
    before = _finished_run_without_checkpoint(out)
    assert main([*TRAIN, "--out", str(out), *(["--resume"] if resume else [])]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "no checkpoint.pt to resume from" in err and "nothing was changed" in err
    assert _contents(out) == before


def test_the_trainer_itself_refuses_before_touching_anything(tmp_path):
    out = tmp_path / "run"
    before = _finished_run_without_checkpoint(out)
    for resume in (True, False):
        with pytest.raises(RunError, match="already holds a run"):
            Trainer(TrainConfig(), out, HostCNN(), data=None, resume=resume, progress=False)
    assert _contents(out) == before
