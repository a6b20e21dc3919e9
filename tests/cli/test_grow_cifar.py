"""A real dataset end to end: grow the example host on the CIFAR-10 JPEG archive."""

import json
import subprocess
import sys

import pytest

from tests.helpers import ROOT

ARCHIVE = ROOT.parent / "shared" / "data" / "cifar10-jpg.tar.gz"


@pytest.mark.slow
@pytest.mark.skipif(not ARCHIVE.exists(), reason="the CIFAR-10 archive is not on this machine")
def test_grow_on_the_cifar10_archive(tmp_path):
    out = tmp_path / "run"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "esper",
            "grow",
            "--policy",
            "heuristic",
            "--host",
            str(ROOT / "examples/host_cnn.py"),
            "--data",
            str(ARCHIVE),
            "--data-root",
            str(tmp_path / "cache"),
            "--limit",
            "5000",
            "--epochs",
            "4",
            "--out",
            str(out),
            "--no-progress",
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    summary = (out / "summary.json").read_text()
    assert (out / "report.md").exists() and (out / "model" / "manifest.yaml").exists()
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    accs = [rec["val_acc"] for rec in records if "val_acc" in rec]
    assert accs and max(accs) > 0.2, summary  # 10 classes: well above chance after 4 epochs
