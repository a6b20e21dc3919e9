"""One rank of a user's own training loop growing under torch.distributed, for
tests/integrations/test_gardener_distributed.py.

    torchrun --standalone --nproc_per_node 2 tests/integrations/garden_on_ranks.py OUT

Each rank trains on its half of every batch through `gardener.data_parallel()`; rank 0's
scripted policy germinates, blends and fossilizes a seed (rank 1's would only wait). The
ranks draw from different RNG streams on purpose. Writes OUT/rank<R>.pt: a hash of every
parameter and buffer after each epoch, the edit log, and what `save` returned.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import esper  # noqa: E402
from esper.leyline import Edit, Op  # noqa: E402
from tests.integrations.helpers import Scripted, grow, tiny  # noqa: E402
from tests.simic.toys import state_hash  # noqa: E402

EPOCHS = 6


def main(out: Path) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    mm, opt, data = tiny()  # seeded: the same host on every rank
    script = grow("block2", "conv_enhance") + [Edit(Op.WAIT), Edit(Op.FOSSILIZE, "block2")]
    gardener = esper.Gardener(
        mm, Scripted(script if rank == 0 else []), optimizer=opt, epochs=EPOCHS, probe=(data.val.x, data.val.y), training_ticks=None
    )
    host = gardener.data_parallel()
    torch.manual_seed(100 + rank)
    order = torch.Generator().manual_seed(7)
    hashes = []
    for _ in range(EPOCHS):
        mm.train()
        for x, y in data.train.batches(32, shuffle=True, generator=order):
            loss = F.cross_entropy(host()(x[rank::world]), y[rank::world])
            opt.zero_grad()
            loss.backward()
            gardener.after_backward()
            opt.step()
        mm.eval()
        with torch.no_grad():
            out_val = mm(data.val.x[rank::world])
        gardener.step(val_acc=(out_val.argmax(-1) == data.val.y[rank::world]).float().mean())
        hashes.append(state_hash(mm))
    report = gardener.save(out / "report")
    torch.save({"hashes": hashes, "edits": [e.to_dict() for e in gardener.edits], "report": str(report)}, out / f"rank{rank}.pt")
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
