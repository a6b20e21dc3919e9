"""Blueprints: registry, sizing from the slot, function-preserving germination."""

import pytest
import torch
import yaml
from torch import nn

import esper
from esper.kasmina.blueprints import (
    blueprint_names,
    blueprints_for,
    build_blueprint,
    load_blueprint_catalogue,
    param_count,
    register_blueprint,
)
from tests.helpers import ROOT, HostCNN, TinyGPT, named

CONV = ["attention", "conv_enhance", "depthwise", "norm"]
SEQ = ["attention", "causal_attention", "lora", "mlp", "norm"]


def test_catalogue_by_rank():
    assert blueprints_for((2, 16, 8, 8)) == CONV
    assert blueprints_for((2, 8, 16)) == SEQ


@pytest.mark.parametrize("name", CONV)
def test_conv_blueprints_start_as_identity(name):
    torch.manual_seed(0)
    x = torch.randn(2, 12, 5, 7)
    bp = build_blueprint(name, x.shape).eval()
    assert torch.allclose(bp(x), x, atol=0, rtol=0) or torch.equal(bp(x), x)


@pytest.mark.parametrize("name", SEQ)
def test_sequence_blueprints_start_as_identity(name):
    torch.manual_seed(0)
    x = torch.randn(3, 9, 16)
    assert torch.equal(build_blueprint(name, x.shape)(x), x)


def test_causal_attention_does_not_look_ahead():
    torch.manual_seed(0)
    x = torch.randn(2, 6, 16)
    for name, leaks in (("causal_attention", False), ("attention", True)):
        bp = build_blueprint(name, x.shape)
        torch.nn.init.normal_(bp.attn.out_proj.weight)
        changed = x.clone()
        changed[:, -1] = torch.randn(2, 16)  # only the last token differs
        moved = (bp(changed) - bp(x))[:, :-1].abs().max()
        assert (moved > 1e-6) == leaks, name


def test_param_count_matches_the_built_module_and_yaml_lists_every_builtin():
    for name in CONV:
        m = build_blueprint(name, (1, 32, 8, 8))
        assert param_count(name, (1, 32, 8, 8)) == sum(p.numel() for p in m.parameters()) > 0
    catalogue = yaml.safe_load((ROOT / "specs/blueprints.yaml").read_text())["blueprints"]
    listed = {(e["name"], r) for e in catalogue for r in e["ranks"]}
    assert listed == {(n, 4) for n in CONV} | {(n, 3) for n in SEQ}


def test_germination_is_function_preserving_on_every_slot(float64):
    # A fresh seed returns its input up to rounding (a normalization's scale and shift, a
    # blend's h + 1 * (s - h)): ~1e-16 in float64, so torch's float64 tolerance (1e-7)
    # shows a seed that is not the identity.
    torch.manual_seed(0)
    for host, x in ((HostCNN(), torch.randn(2, 3, 32, 32)), (TinyGPT(), torch.randint(0, 256, (2, 16)))):
        mm = esper.instrument(host, (x,)).eval()
        with torch.no_grad():
            ref = mm(x)
        for slot_id, slot in mm.plane.slots.items():
            for name in blueprints_for(slot.shape):
                mm.plane.germinate(slot_id, name, steps=1, allow_noncausal=True)  # every blueprint, the bidirectional ones too
                mm.plane.advance(slot_id), mm.plane.advance(slot_id)
                mm.plane.step()  # alpha is now 1: the seed is fully in
                with torch.no_grad():
                    torch.testing.assert_close(mm(x), ref, msg=named(f"{slot_id} {name}"))
                mm.plane.cull(slot_id)
                mm.plane.step()


def test_user_blueprint_by_decorator_and_by_yaml(tmp_path, monkeypatch):
    @register_blueprint("scaled_identity_test", ranks=(4,), description="test-only")
    class Scaled(nn.Module):
        def __init__(self, shape):
            super().__init__()
            self.scale = nn.Parameter(torch.zeros(1))

        def forward(self, x):
            return x * (1 + self.scale)

    assert "scaled_identity_test" in blueprint_names()
    mod = tmp_path / "my_blueprints.py"
    mod.write_text(
        "import torch\nfrom torch import nn\n"
        "class Shift(nn.Module):\n"
        "    def __init__(self, shape):\n"
        "        super().__init__()\n"
        "        self.b = nn.Parameter(torch.zeros(shape[-1]))\n"
        "    def forward(self, x):\n"
        "        return x + self.b\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    cat = tmp_path / "bp.yaml"
    cat.write_text(yaml.safe_dump({"blueprints": [{"name": "shift_test", "ranks": [3], "class": "my_blueprints:Shift"}]}))
    assert load_blueprint_catalogue(cat) == ["shift_test"]
    assert param_count("shift_test", (2, 5, 16)) == 16
