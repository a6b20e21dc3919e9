"""A fossil's new slot gets an id whose submodule name no other slot has."""

from __future__ import annotations

import torch

from esper import instrument
from esper.kasmina.plane import module_key
from esper.leyline import Edit, Op
from esper.simic.host_zoo import HOSTS


def test_fossilizing_next_to_a_dotted_slot_opens_a_slot_with_its_own_module_name():
    mm = instrument(HOSTS["vgg-w8-b3"](10), (torch.randn(2, 3, 16, 16),))
    plane = mm.plane
    assert {"stage1.1", "stage1"} <= set(plane.slots)  # 'stage1+1' would be named like 'stage1.1'
    plane.apply(Edit(Op.GERMINATE, "stage1", blueprint="norm", blend="linear", steps=1))
    plane.apply(Edit(Op.ADVANCE, "stage1"))
    plane.apply(Edit(Op.ADVANCE, "stage1"))
    plane.step()
    plane.apply(Edit(Op.FOSSILIZE, "stage1"))
    keys = [module_key(s) for s in plane.slots]
    assert len(keys) == len(set(keys)) and "stage1+2" in plane.slots
    assert mm(torch.randn(2, 3, 16, 16)).shape == (2, 10)
