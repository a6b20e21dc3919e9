"""`esper export` on a checkpoint, as a user runs it."""

import subprocess
import sys

import torch

import esper
from esper.kasmina.export import deployable
from tests.helpers import ROOT, HostCNN, onnx_outputs


def _checkpoint(tmp_path, finish=True):
    torch.manual_seed(0)
    mm = esper.instrument(HostCNN(), (torch.randn(1, 3, 32, 32),))
    mm.host_factory = f"{ROOT / 'examples/host_cnn.py'}:build_model"
    mm.plane.germinate("block1", "attention", steps=1)
    mm.plane.advance("block1")
    # A zero-initialised seed returns its input: perturbed, a dropped or culled seed shows in the outputs.
    torch.nn.init.normal_(mm.plane.slots["block1"].seed.fc2.weight, std=0.5)
    if finish:
        mm.plane.advance("block1")
        mm.plane.step()
        mm.plane.fossilize("block1")
    esper.save(mm, tmp_path / "ck")
    return mm


def _export(*args):
    host = ["--host", str(ROOT / "examples/host_cnn.py")]
    return subprocess.run([sys.executable, "-m", "esper", "export", *args, *host], capture_output=True, text=True)


def test_export_prints_parameters_and_size(tmp_path):
    mm = _checkpoint(tmp_path)
    r = _export(str(tmp_path / "ck"), "--out", str(tmp_path / "m.pt2"))
    assert r.returncode == 0, r.stderr
    fossil = mm.plane.slots["block1"].param_count()
    assert f"{mm.host_parameter_count():,}" in r.stdout and f"{fossil:,}" in r.stdout
    assert f"{mm.host_parameter_count() + fossil:,}" in r.stdout and "MB" in r.stdout
    program = torch.export.load(str(tmp_path / "m.pt2")).module()
    x = torch.randn(1, 3, 32, 32)
    assert torch.allclose(program(x), mm.eval()(x), atol=1e-5)


def test_export_to_onnx(tmp_path):
    mm = _checkpoint(tmp_path)
    r = _export(str(tmp_path / "ck"), "--out", str(tmp_path / "m.onnx"), "--format", "onnx")
    assert r.returncode == 0, r.stderr
    assert "onnx" in r.stdout.splitlines()[-1]
    x = torch.randn(1, 3, 32, 32)
    torch.testing.assert_close(onnx_outputs(tmp_path / "m.onnx", x), mm.eval()(x).detach(), rtol=1e-4, atol=1e-5)


def test_unfinished_seed_refused_then_finalized(tmp_path):
    mm = _checkpoint(tmp_path, finish=False)
    r = _export(str(tmp_path / "ck"), "--out", str(tmp_path / "m.pt2"))
    assert r.returncode == 2 and "block1 (TRAINING)" in r.stderr and "--finalize" in r.stderr
    r = _export(str(tmp_path / "ck"), "--out", str(tmp_path / "m.pt2"), "--finalize", "cull")
    assert r.returncode == 0, r.stderr
    program = torch.export.load(str(tmp_path / "m.pt2")).module()
    x = torch.randn(2, 3, 32, 32)
    # Culled: the program is the host alone, and the seed it dropped would have changed the output.
    assert torch.allclose(program(x), mm.host.eval()(x), atol=1e-5)
    assert not torch.allclose(program(x), deployable(mm.eval(), "fossilize")(x), atol=1e-3)


def test_not_a_checkpoint(tmp_path):
    r = _export(str(tmp_path), "--out", str(tmp_path / "m.pt2"))
    assert r.returncode == 2 and "not an esper checkpoint" in r.stderr
