"""`esper export` on a checkpoint, as a user runs it."""

import subprocess
import sys

import pytest
import torch

import esper
from esper.kasmina.export import deployable
from tests.helpers import ROOT, HostCNN, named, onnx_outputs

# The exported graph may lower an operation differently from eager, so the artifact and
# the model agree up to rounding only. In float64 that rounding is ~1e-15, and torch's
# float64 tolerance (1e-7) sits far above it and far below what a dropped or culled seed,
# or a weight that did not load, would change. `esper export` builds the host from its
# file, so the host file here builds the examples' HostCNN in float64.
HOST64 = f"""
import sys
sys.path.insert(0, {str(ROOT / "examples")!r})
from host_cnn import build_model as build_float32


def build_model():
    return build_float32().double()
"""


@pytest.fixture(autouse=True)
def host64(tmp_path, float64):
    (tmp_path / "host64.py").write_text(HOST64)


def _checkpoint(tmp_path, finish=True):
    torch.manual_seed(0)
    mm = esper.instrument(HostCNN(), (torch.randn(1, 3, 32, 32),))
    mm.host_factory = f"{tmp_path / 'host64.py'}:build_model"
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


def _export(tmp_path, *args):
    host = ["--host", str(tmp_path / "host64.py")]
    return subprocess.run([sys.executable, "-m", "esper", "export", *map(str, args), *host], capture_output=True, text=True)


def test_export_prints_parameters_and_size(tmp_path):
    mm = _checkpoint(tmp_path)
    r = _export(tmp_path, tmp_path / "ck", "--out", str(tmp_path / "m.pt2"))
    assert r.returncode == 0, r.stderr
    fossil = mm.plane.slots["block1"].param_count()
    assert f"{mm.host_parameter_count():,}" in r.stdout and f"{fossil:,}" in r.stdout
    assert f"{mm.host_parameter_count() + fossil:,}" in r.stdout and "MB" in r.stdout
    program = torch.export.load(str(tmp_path / "m.pt2")).module()
    x = torch.randn(1, 3, 32, 32)
    torch.testing.assert_close(program(x), mm.eval()(x), msg=named("program"))


def test_export_to_onnx(tmp_path):
    mm = _checkpoint(tmp_path)
    r = _export(tmp_path, tmp_path / "ck", "--out", str(tmp_path / "m.onnx"), "--format", "onnx")
    assert r.returncode == 0, r.stderr
    assert "onnx" in r.stdout.splitlines()[-1]
    x = torch.randn(1, 3, 32, 32)
    torch.testing.assert_close(onnx_outputs(tmp_path / "m.onnx", x), mm.eval()(x).detach(), msg=named("onnx"))


def test_unfinished_seed_refused_then_finalized(tmp_path):
    mm = _checkpoint(tmp_path, finish=False)
    r = _export(tmp_path, tmp_path / "ck", "--out", str(tmp_path / "m.pt2"))
    assert r.returncode == 2 and "block1 (TRAINING)" in r.stderr and "--finalize" in r.stderr
    r = _export(tmp_path, tmp_path / "ck", "--out", str(tmp_path / "m.pt2"), "--finalize", "cull")
    assert r.returncode == 0, r.stderr
    program = torch.export.load(str(tmp_path / "m.pt2")).module()
    x = torch.randn(2, 3, 32, 32)
    # Culled: the program is the host alone, and the seed it dropped would have changed the output.
    torch.testing.assert_close(program(x), mm.host.eval()(x), msg=named("culled program"))
    assert not torch.allclose(program(x), deployable(mm.eval(), "fossilize")(x), atol=1e-3)


def test_not_a_checkpoint(tmp_path):
    r = _export(tmp_path, tmp_path, "--out", tmp_path / "m.pt2")
    assert r.returncode == 2 and "not an esper checkpoint" in r.stderr
