"""Seed parameter groups come and go in the user's optimizer; the user's schedulers keep working."""

from __future__ import annotations

import pytest
import torch.nn.functional as F
from torch.optim import lr_scheduler as lr

import esper
from esper.leyline import Edit, Op
from tests.integrations.helpers import Scripted, grow, tiny

SCHEDULERS = {
    "lambda": lambda opt: lr.LambdaLR(opt, lambda epoch: 0.9**epoch),
    "one_cycle": lambda opt: lr.OneCycleLR(opt, max_lr=0.1, total_steps=50),
    "cosine": lambda opt: lr.CosineAnnealingLR(opt, 20),
    "sequential": lambda opt: lr.SequentialLR(opt, [lr.LinearLR(opt, 0.1, total_iters=3), lr.StepLR(opt, 2, 0.5)], milestones=[3]),
    "plateau": lambda opt: lr.ReduceLROnPlateau(opt, patience=0),
}


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_seed_groups_follow_the_schedule_as_they_join_and_leave(name):
    mm, opt, data = tiny()
    scheduler = SCHEDULERS[name](opt)
    culled_then_another = [Edit(Op.CULL, "block2"), Edit(Op.GERMINATE, "block1", "norm", "linear", 1)]
    gardener = esper.Gardener(
        mm,
        Scripted([Edit(Op.WAIT), *grow("block2"), *culled_then_another]),
        optimizer=opt,
        scheduler=scheduler,
        training_ticks=None,  # the script advances its seeds
        epochs=6,
        seed_lr_scale=0.5,
    )
    x, y = data.train.x[:16], data.train.y[:16]
    seeds = []
    for _ in range(6):
        for _ in range(2):
            loss = F.cross_entropy(mm(x), y)
            opt.zero_grad()
            loss.backward()
            gardener.after_backward()
            lead, *others = opt.param_groups
            for group in others:
                assert group["lr"] == pytest.approx(0.5 * lead["lr"])
            seeds.append([group["esper_slot"] for group in others])
            opt.step()
            scheduler.step(loss.item()) if name == "plateau" else scheduler.step()
        gardener.step()
    assert seeds[0] == [] and ["block2"] in seeds and seeds[-1] == ["block1"]
