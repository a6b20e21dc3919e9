"""tools/pretrain_tamiyo.py end to end at smoke size, and the policy it writes in use."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools"))

from esper.simic.policies import PRETRAINED, resolve_policy  # noqa: E402
from esper.simic.train_files import load_policy  # noqa: E402
from esper.tamiyo import TamiyoPolicy  # noqa: E402


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    import pretrain_tamiyo

    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("pretrain")
    assert pretrain_tamiyo.main(["--smoke", "--out", str(out)]) == 0
    return out


def test_a_smoke_pretraining_writes_a_policy_its_config_and_its_record(smoke_run):
    policy, cfg = load_policy(smoke_run / "tamiyo.yaml")
    assert isinstance(policy, TamiyoPolicy) and not policy.training
    assert cfg.episodes == 2 + 2 + 4  # clone, DAgger, one update of two groups of two
    records = [json.loads(line) for line in (smoke_run / "pretrain.jsonl").read_text().splitlines()]
    assert len(records) == 1 and records[0]["episodes"] == 4 and "teacher_agreement" in records[0]
    assert not (smoke_run / "pretrain.ckpt").exists()  # written during the run, gone once the policy is


def test_the_curves_are_drawn_from_the_record(smoke_run, tmp_path):
    import pretrain_tamiyo

    assert pretrain_tamiyo.main(["--out", str(smoke_run), "--plot", str(tmp_path / "curves.png")]) == 0
    assert (tmp_path / "curves.png").stat().st_size > 1000


def test_a_modified_weights_file_is_refused(smoke_run, tmp_path):
    import shutil

    for name in ("tamiyo.yaml", "tamiyo.safetensors"):
        shutil.copy(smoke_run / name, tmp_path / name)
    data = bytearray((tmp_path / "tamiyo.safetensors").read_bytes())
    data[-1] ^= 1
    (tmp_path / "tamiyo.safetensors").write_bytes(bytes(data))
    with pytest.raises(ValueError, match="sha256"):
        load_policy(tmp_path / "tamiyo.yaml")


def test_the_shipped_tamiyo_loads_by_name_with_its_own_vocabulary():
    assert PRETRAINED.is_file(), "esper ships a pretrained Tamiyo (tools/pretrain_tamiyo.py writes it)"
    policy, vocab, cfg = resolve_policy("tamiyo", vocab=None)
    assert isinstance(policy, TamiyoPolicy) and vocab is policy.vocab and cfg is not None
    assert {"conv_enhance", "depthwise", "attention", "norm", "lora", "mlp"} <= set(vocab.blueprints)
