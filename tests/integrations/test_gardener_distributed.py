"""The Gardener in a user's own loop under torch.distributed (two gloo processes)."""

from __future__ import annotations

import pytest
import torch

from esper.integrations import callbacks
from esper.leyline import DistributedError
from esper.simic.distributed import Ranks
from tests.helpers import ROOT
from tests.simic.test_distributed import torchrun


def test_every_rank_of_a_users_loop_grows_the_same_model(tmp_path):
    result = torchrun(ROOT / "tests" / "integrations" / "garden_on_ranks.py", tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    a, b = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert a["hashes"] == b["hashes"] and len(a["hashes"]) == 6
    assert a["edits"] == b["edits"]
    assert [e["op"] for e in a["edits"]] == ["GERMINATE", "ADVANCE", "ADVANCE", "WAIT", "FOSSILIZE", "WAIT"]
    assert a["report"].endswith("report.md") and b["report"] == "None"  # rank 0 alone writes
    assert (tmp_path / "report" / "metrics.jsonl").is_file()


def test_the_trainer_callbacks_refuse_distributed_training_with_a_reason(monkeypatch):
    monkeypatch.setattr(callbacks, "current", lambda: Ranks(0, 2))
    callback = callbacks.GardenerCallbackBase()
    with pytest.raises(DistributedError, match="esper.Gardener in your own loop"):
        callback._start(torch.nn.Linear(2, 2), None, None, 4)
