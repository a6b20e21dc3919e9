"""Exported programs take any batch size (and sequence length, for token hosts); the
parameter counts `esper export` prints are those of what it wrote."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import esper
from esper.cli.main import main
from tests.helpers import ROOT, HostCNN, TinyGPT, named
from tests.reliability.checkpoints import grown

# The exported program may lower an operation differently from eager, so the two agree up
# to rounding only: ~1e-15 in float64 (the `float64` fixture), against torch's float64
# tolerance of 1e-7, which a wrongly specialized shape or a dropped seed exceeds by far.


def _program(mm, example, path):
    esper.export(mm.eval(), example, path)
    return torch.export.load(str(path)).module()


def test_any_batch_size_even_from_a_batch_of_one(tmp_path, float64):
    torch.manual_seed(0)
    mm = esper.instrument(HostCNN(), (torch.randn(1, 3, 16, 16),))
    mm.plane.germinate("block2", "depthwise", steps=1)
    mm.plane.advance("block2"), mm.plane.advance("block2")
    mm.plane.step()
    mm.plane.fossilize("block2")
    program = _program(mm, (torch.randn(1, 3, 16, 16),), tmp_path / "cnn.pt2")
    for batch in (1, 3, 17):
        x = torch.randn(batch, 3, 16, 16)
        torch.testing.assert_close(program(x), mm(x), msg=named(f"batch {batch}"))


def test_token_hosts_take_any_batch_and_sequence_length(tmp_path, float64):
    torch.manual_seed(0)
    mm = esper.instrument(TinyGPT(depth=2), (torch.randint(0, 256, (2, 8)),))
    program = _program(mm, (torch.randint(0, 256, (1, 1)),), tmp_path / "gpt.pt2")
    for shape in ((1, 1), (3, 5), (2, 64)):
        ids = torch.randint(0, 256, shape)
        torch.testing.assert_close(program(ids), mm(ids), msg=named(f"shape {shape}"))


class FixedBatch(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
        self.b = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.ReLU())

    def forward(self, x):
        return self.b(self.a(x)).reshape(2, -1)


def test_a_host_that_fixes_its_batch_exports_fixed_and_says_so(tmp_path, float64):
    mm = esper.instrument(FixedBatch(), (torch.randn(2, 3, 8, 8),))
    with pytest.warns(UserWarning, match="fixed input shapes"):
        program = _program(mm, (torch.randn(2, 3, 8, 8),), tmp_path / "fixed.pt2")
    x = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(program(x), mm(x))


def test_finalize_fossilize_prints_the_parameters_it_wrote(tmp_path, capsys):
    mm, _ = grown(tmp_path)
    out = tmp_path / "m.pt2"
    args = ["export", str(tmp_path / "ck"), "--host", str(ROOT / "examples/host_cnn.py"), "--out", str(out)]
    assert main([*args, "--finalize", "fossilize"]) == 0
    printed = {line.split()[0]: line.split()[-1] for line in capsys.readouterr().out.splitlines()}
    written = sum(p.numel() for p in torch.export.load(str(out)).parameters())
    assert int(printed["total"].replace(",", "")) == written
    assert written > mm.host_parameter_count() + mm.plane.slots["block2"].param_count()  # the finalized seeds count
