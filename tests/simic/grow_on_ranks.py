"""One rank of a distributed growth episode, for tests/simic/test_distributed.py.

    torchrun --standalone --nproc_per_node 2 tests/simic/grow_on_ranks.py OUT HOST [hang|die|nan]

Plays a fixed script on rank 0 (rank 1's policy would play only WAITs, so any edit it
applies came from rank 0): germinate two seeds, fossilize one, cull the other. Writes
OUT/rank<R>.pt: every tick's hash of all parameter and buffer bytes, the edit log, the
final test accuracy, the final state and the training FLOPs. HOST is `batchnorm` or `groupnorm` (whose
training does not depend on how a batch is split; it runs in float64, see main). With
`hang`, rank 1 stops answering after the second tick; with `die`, it exits there. With
`nan`, block2 grows a seed whose output is NaN on batches of odd size: under two ranks
only rank 1's shards are odd.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from esper.kasmina.blueprints import register_blueprint  # noqa: E402
from esper.kasmina.hosts import reinitialized_copies  # noqa: E402
from esper.leyline import Edit, Op  # noqa: E402
from esper.simic.distributed import decided_on_main, start, stop  # noqa: E402
from esper.simic.env import EnvConfig, GrowthEnv  # noqa: E402
from esper.simic.vectorized import VectorEnv, decide_with, run_episodes  # noqa: E402
from tests.integrations.helpers import Scripted  # noqa: E402
from tests.simic.toys import SCRIPT, TinyCNN, state_hash, toy_data  # noqa: E402


@register_blueprint("nan_on_odd_batches", ranks=(4,))
class NanOnOddBatches(nn.Module):
    def __init__(self, shape):
        super().__init__()
        self.scale = nn.Parameter(torch.zeros(1, shape[1], 1, 1))

    def forward(self, x):
        return x * self.scale + (float("nan") if len(x) % 2 else 0.0)


class GroupNormCNN(TinyCNN):
    def __init__(self):
        super().__init__()
        self.block1[1] = nn.GroupNorm(2, 8)
        self.block2[1] = nn.GroupNorm(4, 16)


def main(out: str, host: str, fault: str) -> None:
    torch.set_num_threads(1)
    ranks, device = start("cpu", timeout=10 if fault in ("hang", "die") else 120)
    if host == "groupnorm":
        # One process and two sum the gradient in different orders. AdamW divides each
        # gradient by its running RMS, so where a gradient is nearly zero float32 rounding
        # noise becomes a step of up to lr: the runs would part by an amount that depends
        # on the CPU. In float64 the noise is ~1e-16 of the gradient's scale, far below
        # AdamW's eps (1e-8), and the grown models agree to ~1e-15.
        torch.set_default_dtype(torch.float64)
    template = TinyCNN() if host == "batchnorm" else GroupNormCNN()
    # 99 training images in batches of 25: two ranks split them 12/13, 12/13, 12/13, 12/12,
    # so the loss weighting is exercised.
    data = toy_data(n_train=99, n_val=37)
    blueprint = "conv_enhance" if host == "batchnorm" else "norm"
    script = [Edit(e.op, e.slot, blueprint if e.slot == "block2" and e.blueprint else e.blueprint, e.blend, e.steps) for e in SCRIPT]
    if fault == "nan":
        script = [Edit(Op.GERMINATE, "block2", "nan_on_odd_batches", "linear", 1), Edit(Op.ADVANCE, "block2")]
    env = GrowthEnv(
        reinitialized_copies(template),
        data,
        EnvConfig(training_ticks=None, epochs=7, batch_size=25, eval_batch_size=10),
        device=device,
        ranks=ranks,
    )
    policy = Scripted(script if ranks.main else [])
    ticks = []

    def on_decision(decision):
        ticks.append(state_hash(env.mm))
        if fault in ("hang", "die") and ranks.rank == 1 and len(ticks) == 2:
            if fault == "die":
                os._exit(3)
            time.sleep(600)

    run_episodes(VectorEnv([env]), [3], decided_on_main(decide_with(policy), ranks), on_decision)
    _, test_acc = env.evaluate(data.test)
    torch.save(
        {
            "ticks": ticks,
            "edits": [e.to_dict() for e in env.plane.edits],
            "test_acc": test_acc,
            "state": {k: v.detach().clone() for k, v in env.mm.state_dict().items()},
            "world_size": ranks.world_size,
            "flops": (env.summary().train_flops, env.summary().host_flops_per_image),
        },
        Path(out) / f"rank{ranks.rank}.pt",
    )
    stop()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else "")
