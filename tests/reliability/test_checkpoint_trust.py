"""A checkpoint never runs code unless trusted; trusted or given a host, it loads; every
bad manifest field is a CheckpointError that names it."""

from __future__ import annotations

import hashlib
import subprocess
import sys

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

import esper
from esper.cli.main import main
from esper.kasmina.hosts import load_model_file
from esper.leyline import CheckpointError
from tests.helpers import ROOT, HostCNN
from tests.reliability.checkpoints import EXAMPLE, factory_file, grown


@pytest.fixture
def saved(tmp_path):
    mm, x = grown(tmp_path)
    return tmp_path / "ck", mm, x


def _manifest(ck):
    return yaml.safe_load((ck / "manifest.yaml").read_text())


def _write(ck, manifest):
    (ck / "manifest.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False))


def test_load_refuses_to_run_the_factory_untrusted(saved, capsys):
    ck, _, _ = saved
    with pytest.raises(CheckpointError) as e:
        esper.load(ck)
    text = str(e.value)
    assert "factory.py:build_model" in text and "host=" in text and "trust_host_code=True" in text
    assert not (ck.parent / "MARKER").exists()
    manifest = _manifest(ck)
    manifest["host"]["factory"] = "this:s"  # importing `this` prints the Zen of Python
    _write(ck, manifest)
    with pytest.raises(CheckpointError, match="'this:s'"):
        esper.load(ck)
    assert "Beautiful is better" not in capsys.readouterr().out


def test_export_refuses_to_run_the_factory_untrusted(saved, tmp_path):
    ck, _, _ = saved
    manifest = _manifest(ck)
    for factory in (manifest["host"]["factory"], "this:s"):
        manifest["host"]["factory"] = factory
        _write(ck, manifest)
        r = subprocess.run(
            [sys.executable, "-m", "esper", "export", str(ck), "--finalize", "cull", "--out", str(tmp_path / "x.pt2")],
            capture_output=True,
            text=True,
        )
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert "--host" in r.stderr and "--trust-host-code" in r.stderr and factory in r.stderr
        assert "Beautiful is better" not in r.stdout and not (ck.parent / "MARKER").exists()
        assert not (tmp_path / "x.pt2").exists()


def test_trusted_or_given_a_host_it_loads_bit_for_bit(saved):
    ck, mm, x = saved
    given = esper.load(ck, host=HostCNN())
    assert not (ck.parent / "MARKER").exists()
    trusted = esper.load(ck, trust_host_code=True)
    assert (ck.parent / "MARKER").exists()  # the factory did run, as asked
    for loaded in (given, trusted):
        assert torch.equal(loaded.eval()(x), mm(x))
        assert [(i, s.stage) for i, s in loaded.plane.slots.items()] == [(i, s.stage) for i, s in mm.plane.slots.items()]


NET = """
from torch import nn


class Net(nn.Module):
    def __init__(self, width=8):
        super().__init__()
        self.block1 = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU())
        self.block2 = nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.ReLU())
        self.block3 = nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.ReLU())

    def forward(self, x):
        return self.block3(self.block2(self.block1(x))).mean((2, 3))
"""


@pytest.mark.parametrize("source", ["build_model", "class"])
def test_a_host_esper_loaded_from_a_model_file_loads_again(tmp_path, source):
    path = tmp_path / "mine.py"
    path.write_text(NET + ("\n\ndef build_model():\n    return Net(width=4)\n" if source == "build_model" else ""))
    host, _ = load_model_file(path)
    mm = esper.instrument(host, (torch.randn(EXAMPLE),))
    mm.plane.germinate("block1", "norm", steps=1)
    esper.save(mm, tmp_path / "ck")
    assert _manifest(tmp_path / "ck")["host"]["factory"].startswith(str(path.resolve()))
    again = esper.load(tmp_path / "ck", trust_host_code=True)
    x = torch.randn(EXAMPLE)
    assert torch.equal(again.eval()(x), mm.eval()(x))


def test_two_model_files_of_one_name_stay_apart(tmp_path):
    for width, folder in ((4, "a"), (6, "b")):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "model.py").write_text(NET + f"\n\ndef build_model():\n    return Net(width={width})\n")
    first, _ = load_model_file(tmp_path / "a" / "model.py")
    load_model_file(tmp_path / "b" / "model.py")
    esper.save(esper.instrument(first, (torch.randn(EXAMPLE),)), tmp_path / "ck")
    again = esper.load(tmp_path / "ck", trust_host_code=True)
    assert again.block1[0].out_channels == 4


def test_a_host_that_cannot_be_rebuilt_says_to_pass_host(saved):
    ck, _, _ = saved
    manifest = _manifest(ck)
    manifest["host"]["factory"] = "esper_user_model_gone:HostCNN"
    _write(ck, manifest)
    with pytest.raises(CheckpointError, match=r"cannot rebuild the host \(.*ModuleNotFoundError.*pass host="):
        esper.load(ck, trust_host_code=True)


def test_grow_output_exports_with_host_or_trust_only(tmp_path, capsys):
    out = tmp_path / "demo"
    host = str(ROOT / "examples/host_cnn.py")
    tiny = ["--data", "synthetic", "--limit", "60", "--epochs", "1", "--batch-size", "32", "--no-progress"]
    assert main(["grow", "--policy", "heuristic", "--host", host, "--out", str(out), *tiny]) == 0
    export = ["export", str(out / "model"), "--out", str(tmp_path / "m.pt2"), "--finalize", "cull"]
    capsys.readouterr()
    assert main(export) == 2
    assert "--trust-host-code" in capsys.readouterr().err
    assert main([*export, "--host", host]) == 0
    assert main([*export, "--trust-host-code"]) == 0
    assert (tmp_path / "m.pt2").is_file()


def test_a_trained_policy_never_runs_the_model_file_it_names(tmp_path, capsys):
    from esper.simic.training import TrainConfig, save_policy
    from esper.tamiyo import TamiyoPolicy

    cfg = TrainConfig(host=str(factory_file(tmp_path)), limit=60, hidden=8).resolved()
    policy = TamiyoPolicy(cfg.vocabulary, hidden=cfg.hidden)
    save_policy(policy, tmp_path / "tamiyo.pt", cfg, episodes=0)
    assert main(["grow", "--policy", str(tmp_path / "tamiyo.pt"), "--out", str(tmp_path / "g"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "factory.py" in err and "--host" in err and "--trust-host-code" in err
    assert not (tmp_path / "MARKER").exists() and not (tmp_path / "g").exists()


def _resign(ck, tensors):
    save_file(tensors, str(ck / "tensors.safetensors"))
    manifest = _manifest(ck)
    manifest["tensors"]["sha256"] = hashlib.sha256((ck / "tensors.safetensors").read_bytes()).hexdigest()
    manifest["tensors"]["count"] = len(tensors)
    _write(ck, manifest)


def _set(path, value):
    def change(m):
        *parents, last = path
        for key in parents:
            m = m[key]
        if value is KeyError:
            del m[last]
        else:
            m[last] = value

    return change


def _grown_tensor(ck):
    tensors = load_file(str(ck / "tensors.safetensors"))
    name = next(k for k in tensors if k.startswith("plane.block1.seed"))
    tensors[name] = torch.zeros(*tensors[name].shape, 2)
    _resign(ck, tensors)


def _edit_that_does_not_replay(m):
    m["edits"].insert(0, {"op": "FOSSILIZE", "slot": "block3", "step": 0})


MALFORMED = {
    "sha256 missing": (_set(("tensors", "sha256"), KeyError), "tensors.sha256"),
    "sha256 wrong": (_set(("tensors", "sha256"), "0" * 64), "sha256"),
    "edits that do not replay": (_edit_that_does_not_replay, r"edits\[0\]"),
    "an edit that is not one": (_set(("edits", 1), {"op": "GROW", "slot": "block1"}), r"edits\[1\]"),
    "an edit with a stray key": (_set(("edits", 1, "when"), 3), r"edits\[1\]"),
    "unknown dtype": (_set(("example_inputs", 0, "dtype"), "load"), r"example_inputs\[0\]\.dtype"),
    "aliases of nothing": (_set(("tensors", "aliases"), {"head.weight": "no.such.tensor"}), "tensors.aliases.head.weight"),
    "aliases not a mapping": (_set(("tensors", "aliases"), ["x"]), "tensors.aliases"),
    "example shapes changed": (_set(("example_inputs", 0, "shape"), [4, 3, 8, 8]), r"spec.slots\[0\].shape"),
    "example rank changed": (_set(("example_inputs", 0, "shape"), [2, 3, 8]), "example_inputs"),
    "graph shape disagrees": (_set(("spec", "slots", 1, "shape"), [2, 64, 5, 5]), r"spec.slots\[1\].shape"),
    "stage disagrees": (_set(("slots", "block1", "stage"), "TRAINING"), "slots.block1.stage"),
    "schedule disagrees": (_set(("slots", "block1", "steps"), 9), "slots.block1.steps"),
    "an edit's schedule changed": (_set(("edits", 0, "steps"), 9), "slots.block1.steps"),
    "step count before the last edit": (_set(("step_count",), 0), "step_count"),
    "tensor file outside": (_set(("tensors", "file"), "../ck/tensors.safetensors"), "tensors.file"),
    "count wrong": (_set(("tensors", "count"), 3), "tensors.count"),
    "trace kind": (_set(("trace",), "hooks"), "trace"),
    "unknown field": (_set(("extra",), 1), "extra"),
    "a YAML tag": (lambda m: m.update(spec="TAGGED"), "not plain YAML"),
    "a tag PyYAML cannot build": (_set(("step_count",), "TAGGED"), "not plain YAML"),
}
TAGS = {"a YAML tag": "!!python/object/apply:os.system [ls]", "a tag PyYAML cannot build": "!!int twelve"}


@pytest.mark.parametrize("case", MALFORMED)
def test_every_malformed_field_is_named(saved, case):
    ck, _, _ = saved
    change, field = MALFORMED[case]
    manifest = _manifest(ck)
    change(manifest)
    _write(ck, manifest)
    if case in TAGS:
        text = (ck / "manifest.yaml").read_text().replace(": TAGGED", f": {TAGS[case]}")
        (ck / "manifest.yaml").write_text(text)
    with pytest.raises(CheckpointError, match=field):
        esper.load(ck, host=HostCNN())


def test_tensors_that_disagree_with_the_replayed_model_are_named(saved):
    ck, _, _ = saved
    _grown_tensor(ck)
    with pytest.raises(CheckpointError, match=r"'edits' rebuild 'plane.block1.seed.*' with shape"):
        esper.load(ck, host=HostCNN())
