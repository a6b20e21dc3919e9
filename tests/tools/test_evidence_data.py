"""The evidence benchmark records its data set by name and sha256 (or the synthetic task's
generation parameters), never by a path on the machine that ran it."""

from __future__ import annotations

import hashlib
import importlib
import json

import pytest

from tests.helpers import ROOT
from tests.tools.test_evidence import evidence

# The module evidence.py imported (a second copy would give its classes a second identity,
# which the benchmark's worker processes cannot unpickle).
regime = importlib.import_module(evidence.Scale.__module__)

CIFAR = ROOT.parent / "shared" / "data" / "cifar10-jpg.tar.gz"


def test_a_files_digest_is_its_sha256_read_in_chunks(tmp_path):
    blob = bytes(range(256)) * 41
    (tmp_path / "data.tar.gz").write_bytes(blob)
    assert regime.sha256_of(tmp_path / "data.tar.gz", chunk=1000) == hashlib.sha256(blob).hexdigest()


def test_a_directorys_digest_follows_its_files_names_and_bytes(tmp_path):
    (tmp_path / "train" / "cat").mkdir(parents=True)
    (tmp_path / "train" / "cat" / "1.jpg").write_bytes(b"meow")
    first = regime.sha256_of(tmp_path)
    (tmp_path / "train" / "cat" / "1.jpg").rename(tmp_path / "train" / "cat" / "2.jpg")
    renamed = regime.sha256_of(tmp_path)
    (tmp_path / "train" / "cat" / "2.jpg").write_bytes(b"purr")
    assert len({first, renamed, regime.sha256_of(tmp_path)}) == 3


def test_an_archive_is_recorded_by_name_and_sha256_not_by_path(tmp_path):
    (tmp_path / "pets.tar.gz").write_bytes(b"not really an archive")
    record = regime.dataset_record(str(tmp_path / "pets.tar.gz"), "pets", {"seed": 0, "limit": 10})
    assert record == {"name": "pets", "file": "pets.tar.gz", "sha256": hashlib.sha256(b"not really an archive").hexdigest()}


def test_the_synthetic_task_is_recorded_by_the_parameters_it_is_generated_from():
    _, record = regime.load_regime_data(regime.SCALES["smoke"], root="unused")
    assert record == {"name": "synthetic", "seed": 0, "limit": 600}


def test_the_published_evidence_names_its_data_set_by_sha256():
    data = json.loads((ROOT / "docs" / "evidence.json").read_text())["regime"]["data"]
    assert set(data) == {"name", "file", "sha256"} and "/" not in data["file"]
    if not CIFAR.exists():
        pytest.skip(f"{CIFAR} is not on this machine")
    assert data["file"] == CIFAR.name and data["sha256"] == regime.sha256_of(CIFAR)
