"""Export: dormant slots stripped, fossils folded, and the artifact runs without esper."""

import subprocess
import sys

import pytest
import torch

import esper
from esper.kasmina.export import deployable
from esper.leyline import ExportError
from tests.helpers import HostCNN, named, onnx_outputs, tiny_bert

# The exported graph may lower an operation differently from eager (a decomposed batch
# norm, a fused add), so the artifact and the model agree up to rounding only. The models
# here are float64: that rounding is ~1e-15, and torch's float64 tolerance (1e-7) sits
# far above it and far below what a dropped fossil or a stale weight would change.
pytestmark = pytest.mark.usefixtures("float64")


def _grown():
    torch.manual_seed(0)
    mm = esper.instrument(HostCNN(), (torch.randn(2, 3, 32, 32),))
    p = mm.plane
    p.germinate("block2", "conv_enhance", blend="gated", steps=1)
    p.advance("block2"), p.advance("block2")
    p.step()
    p.fossilize("block2")
    torch.nn.init.normal_(p.slots["block2"].seed.seed.proj.weight, std=0.1)
    return mm.eval()


def _run_without_esper(program, x, y):
    code = (
        "import sys, torch\n"
        f"m = torch.export.load({str(program)!r}).module()\n"
        f"x, y = torch.load({str(x)!r}), torch.load({str(y)!r})\n"
        "out = m(x)\n"
        "assert out.dtype == y.dtype == torch.float64, (out.dtype, y.dtype)\n"
        "assert not any(k == 'esper' or k.startswith('esper.') or k.startswith('kernels') for k in sys.modules), 'esper was imported'\n"
        "print(float((out - y).abs().max()))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/")
    assert r.returncode == 0, r.stderr
    return float(r.stdout)


def test_exported_fossil_matches_in_a_process_without_esper(tmp_path):
    mm = _grown()
    x = torch.randn(5, 3, 32, 32)
    esper.export(mm, (x,), tmp_path / "model.pt2")
    torch.save(x, tmp_path / "x.pt")
    torch.save(mm(x).detach(), tmp_path / "y.pt")
    assert _run_without_esper(tmp_path / "model.pt2", tmp_path / "x.pt", tmp_path / "y.pt") <= 1e-7


def test_deployable_graph_has_no_slots_and_only_aten_ops(tmp_path):
    mm = _grown()
    module = deployable(mm)
    assert "slot" not in module.code and "plane.block2.seed" in module.code
    program = torch.export.export(module, (torch.randn(2, 3, 32, 32),))
    targets = [n.target for n in program.graph.nodes if n.op == "call_function"]
    assert all(getattr(t, "namespace", None) == "aten" or t.__module__.startswith("_operator") for t in targets), targets


def test_unfinished_seeds_are_refused_with_a_way_forward():
    mm = _grown()
    mm.plane.germinate("block1", "norm")
    mm.plane.advance("block1")
    mm.plane.germinate("block3", "attention")
    with pytest.raises(ExportError, match=r"block1 \(TRAINING\), block3 \(GERMINATED\).*--finalize cull"):
        deployable(mm)
    culled = deployable(mm, "cull")
    fossilized = deployable(mm, "fossilize")
    assert "plane.block1" not in culled.code and "plane.block1.seed" in fossilized.code
    assert mm.plane.slots["block1"].stage.name == "TRAINING"  # the model itself is untouched


def test_hooked_host_exports_too(tmp_path):
    model, ids = tiny_bert()
    mm = esper.instrument(model, (ids,))
    sid = "encoder.layer.1"
    mm.plane.germinate(sid, "mlp", steps=1)
    mm.plane.advance(sid), mm.plane.advance(sid)
    mm.plane.step()
    mm.plane.fossilize(sid)
    torch.nn.init.normal_(mm.plane.slots[sid].seed.fc2.weight, std=0.1)
    mm.eval()
    esper.export(mm, (ids,), tmp_path / "bert.pt2")
    loaded = torch.export.load(str(tmp_path / "bert.pt2")).module()
    expected = mm(ids).last_hidden_state
    got = loaded(ids)
    got = got["last_hidden_state"] if isinstance(got, dict) else got[0]
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, expected, msg=named("last_hidden_state"))


def test_onnx_export_computes_what_the_model_does(tmp_path):
    mm = _grown()
    x = torch.randn(1, 3, 32, 32)
    esper.export(mm, (torch.randn(1, 3, 32, 32),), tmp_path / "m.onnx", format="onnx")
    expected = mm(x).detach()
    assert not torch.allclose(expected, mm.host(x), atol=1e-3)  # the fossil is in what is compared
    torch.testing.assert_close(onnx_outputs(tmp_path / "m.onnx", x), expected)


def test_onnx_without_its_extra_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)  # as if the extra were not installed
    with pytest.raises(ExportError, match="pip install 'esper\\[onnx\\]'"):
        esper.export(_grown(), (torch.randn(1, 3, 32, 32),), tmp_path / "m.onnx", format="onnx")
