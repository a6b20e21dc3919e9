"""GardenerCallback inside a Lightning Trainer (the `lightning` extra)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import esper
from esper.integrations.gardener import Gardener
from esper.leyline import Op
from tests.integrations.helpers import Scripted, against_chance, count_calls, grow
from tests.simic.toys import TinyCNN, toy_data

pl = pytest.importorskip("lightning.pytorch", reason="the lightning extra is not installed: pip install -e '.[lightning]'")
from esper.integrations.lightning import GardenerCallback  # noqa: E402


class Classifier(pl.LightningModule):
    def __init__(self, example):
        super().__init__()
        self.net = esper.instrument(TinyCNN(), (example,))

    def training_step(self, batch, _):
        x, y = batch
        loss = F.cross_entropy(self.net(x), y)
        self.log("train_loss", loss, on_epoch=True, on_step=False)
        return loss

    def validation_step(self, batch, _):
        x, y = batch
        out = self.net(x)
        self.log("val_loss", F.cross_entropy(out, y))
        self.log("val_acc", (out.argmax(-1) == y).float().mean())

    def configure_optimizers(self):
        opt = torch.optim.AdamW(self.parameters(), lr=1e-2)
        return {"optimizer": opt, "lr_scheduler": torch.optim.lr_scheduler.LambdaLR(opt, lambda epoch: 0.5**epoch)}


class ValAccuracies(pl.Callback):
    def __init__(self):
        self.values = []

    def on_validation_epoch_end(self, trainer, module):
        if not trainer.sanity_checking:
            self.values.append(float(trainer.callback_metrics["val_acc"]))


def test_lightning_grows_a_seed_deciding_at_each_epoch_end(monkeypatch):
    guarded = count_calls(monkeypatch, Gardener, "after_backward")
    torch.manual_seed(0)
    data = toy_data()
    module = Classifier(data.train.x[:2])
    policy = Scripted(grow("block2", steps=2))
    callback, accuracies = GardenerCallback(policy, training_ticks=None), ValAccuracies()  # the script advances its seed

    def loader(split):
        return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(split.x, split.y), batch_size=32)

    trainer = pl.Trainer(
        max_epochs=4,
        callbacks=[accuracies, callback],
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, loader(data.train), loader(data.val))
    gardener = callback.gardener
    assert gardener.epochs == 4 and gardener.model is module.net
    # decision 0 when training begins, then one per closed interval but the last
    assert [(e.op, e.tick) for e in gardener.edits] == [(Op.GERMINATE, 0), (Op.ADVANCE, 1), (Op.ADVANCE, 2), (Op.WAIT, 3)]
    observed = [o.global_feature("val_acc") for o in policy.seen[1:]]
    assert observed == pytest.approx(against_chance(accuracies.values[:-1], 4)) and gardener.done
    # The seed trained in Lightning's optimizer at the rate its scheduler gave the host.
    groups = trainer.optimizers[0].param_groups
    assert [g.get("esper_slot") for g in groups] == [None, "block2"]
    assert groups[1]["lr"] == pytest.approx(groups[0]["lr"]) == pytest.approx(1e-2 * 0.5**4)
    assert all(trainer.optimizers[0].state[p] for p in groups[1]["params"])
    assert len(guarded) == trainer.global_step  # after every backward pass
