"""A small grown checkpoint whose host factory, if anything ran it, would leave a marker file."""

from __future__ import annotations

from pathlib import Path

import torch

import esper
from tests.helpers import ROOT, HostCNN

EXAMPLE = (2, 3, 8, 8)

# A model file that announces being run by writing the file MARKER next to itself.
FACTORY_FILE = f"""
import sys
from pathlib import Path

Path(__file__).with_name("MARKER").write_text("the factory ran")
sys.path.insert(0, {str(ROOT / "examples")!r})
from host_cnn import build_model  # noqa: E402,F401
"""


def factory_file(folder: Path) -> Path:
    path = folder / "factory.py"
    path.write_text(FACTORY_FILE)
    return path


def grown(folder: Path) -> tuple[esper.MorphogeneticModel, torch.Tensor]:
    """A HostCNN with a seed in each stage that has one, saved to folder/ck with its
    factory set to folder/factory.py; and an input to compare outputs on."""
    torch.manual_seed(0)
    mm = esper.instrument(HostCNN(), (torch.randn(EXAMPLE),))
    p = mm.plane
    p.germinate("block1", "depthwise", blend="gated", steps=3)
    p.advance("block1"), p.advance("block1")  # BLENDING
    p.germinate("block2", "norm", steps=1)
    p.advance("block2"), p.advance("block2")
    p.step()
    p.fossilize("block2")  # FOSSILIZED, and block2+1 opens after it
    p.germinate("block3", "attention", blend="sigmoid", steps=4)
    p.advance("block3"), p.advance("block3")
    p.step()
    p.cull("block3")  # CULLED, with an event
    p.germinate("block2+1", "norm")  # GERMINATED
    for slot in p.slots.values():
        for t in slot.seed_parameters():
            torch.nn.init.normal_(t, std=0.1)  # seeds that change the output
    mm.host_factory = f"{factory_file(folder)}:build_model"
    esper.save(mm, folder / "ck")
    return mm.eval(), torch.randn(3, *EXAMPLE[1:])
