"""GardenerCallback for Lightning (`pip install -e '.[lightning]'`): a growth decision at each epoch's end.

    class Classifier(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = esper.instrument(model, example_inputs=(x,))   # instrumented inside
        ...                                                          # self.log("val_loss", ...), "val_acc"...
    callback = GardenerCallback(policy="heuristic", probe=(x_val, y_val))   # Gardener's options
    L.Trainer(max_epochs=E, callbacks=[callback]).fit(Classifier(), train_loader, val_loader)
    callback.gardener.edits, callback.gardener.save("runs/lightning")

When fitting starts, the Gardener is made around the instrumented model inside the
LightningModule, the first optimizer and every learning-rate scheduler Lightning
configured; `max_epochs` decisions are expected. Seeds with non-finite gradients are
culled after each backward pass (before clipping), and at the end of each training epoch
(after that epoch's validation) the policy decides from the metrics logged under the names
in `metric_names`.

Lightning reads nothing off the instrumented model itself (it trains the LightningModule
around it), so unlike esper.integrations.hf this module forwards no host attribute.
"""

from __future__ import annotations

import lightning.pytorch as pl

from esper.integrations.callbacks import GardenerCallbackBase


class GardenerCallback(GardenerCallbackBase, pl.Callback):
    """See GardenerCallbackBase for the arguments; by default the policy expects one
    decision per epoch (the Trainer's max_epochs)."""

    # names as logged with LightningModule.log
    METRIC_NAMES = {"train_loss": "train_loss", "train_acc": "train_acc", "val_loss": "val_loss", "val_acc": "val_acc"}

    def on_fit_start(self, trainer, pl_module):
        epochs = self.decisions or trainer.max_epochs
        if not epochs or epochs < 1:
            raise ValueError("the gardener decides once per epoch: give the Trainer max_epochs, or this callback decisions=")
        if not trainer.optimizers:
            raise ValueError("the gardener needs the optimizer that trains the model: configure_optimizers returned none")
        schedulers = [config.scheduler for config in trainer.lr_scheduler_configs]
        self._start(pl_module, trainer.optimizers[0], schedulers, epochs)

    def on_after_backward(self, trainer, pl_module):
        self.gardener.after_backward()

    def on_train_epoch_end(self, trainer, pl_module):
        self._decide(trainer.callback_metrics)
