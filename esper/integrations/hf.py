"""GardenerCallback for the HuggingFace `transformers.Trainer`: a growth decision at each evaluation.

    mm = esper.instrument(model, example_inputs=(input_ids,))   # the Trainer trains mm
    args = TrainingArguments(..., eval_strategy="steps", eval_steps=100,
                             remove_unused_columns=False, label_names=["labels"])
    callback = GardenerCallback(policy="heuristic", probe=score)   # Gardener's options
    Trainer(model=mm, args=args, ..., callbacks=[callback]).train()
    callback.gardener.edits, callback.gardener.save("runs/hf")

The Gardener is made when training begins, around the Trainer's own optimizer and
learning-rate scheduler; it culls seeds with non-finite gradients before each optimizer
step and decides at each evaluation during training from the evaluation metrics and the
last logged training loss. The Trainer clips gradients before callbacks see them, so a
seed whose gradient turns non-finite is culled one step too late to spare that step.

Importing this module makes instrumented models read HOST_ATTRIBUTES through to their host
(`mm.config`, `mm.main_input_name`, ...), so that the Trainer treats an instrumented
PreTrainedModel as one. Without it (`import esper` never loads transformers) those names
are at `mm.host.config` and so on, and a Trainer treats the model as a plain nn.Module.
`generate` is not forwarded: the host's own would run the host's forward pass, without the seeds.
"""

from __future__ import annotations

import math

from transformers import TrainerCallback

from esper.integrations.callbacks import GardenerCallbackBase
from esper.kasmina.model import MorphogeneticModel

# What the Trainer and the libraries under it read from the model they are given (most by
# getattr with a default, for a plain nn.Module that lacks them).
HOST_ATTRIBUTES = (
    "config",
    "generation_config",
    "main_input_name",
    "name_or_path",
    "num_parameters",
    "can_generate",
    "device",
    "dtype",
    "loss_type",
    "accepts_loss_kwargs",
    "tp_size",
    "_tp_size",
    "is_distributed_loading_by_transformers",
    "hf_device_map",
    "hf_quantizer",
    "is_quantized",
    "quantization_method",
    "is_loaded_in_8bit",
    "is_loaded_in_4bit",
    "supports_gradient_checkpointing",
    "is_gradient_checkpointing",
    "_keys_to_ignore_on_save",
    "_is_accelerate_prepared",
    "_is_replica",
)
MorphogeneticModel.forward_host_attributes(*HOST_ATTRIBUTES)


def evaluations(args, state) -> int:
    """How many evaluations a training run will make: the Gardener's decision count."""
    strategy = str(getattr(args.eval_strategy, "value", args.eval_strategy))
    if strategy == "steps":
        return max(1, state.max_steps // state.eval_steps)
    if strategy == "epoch":
        return max(1, math.ceil(state.num_train_epochs))
    raise ValueError("the gardener decides at each evaluation: set TrainingArguments(eval_strategy='steps' or 'epoch')")


class GardenerCallback(GardenerCallbackBase, TrainerCallback):
    """See GardenerCallbackBase for the arguments; by default the policy expects one
    decision per evaluation."""

    # compute_metrics' "accuracy" is logged as "eval_accuracy"
    METRIC_NAMES = {"train_loss": "loss", "val_loss": "eval_loss", "val_acc": "eval_accuracy"}
    _training = False

    def on_train_begin(self, args, state, control, model=None, optimizer=None, lr_scheduler=None, **kwargs):
        # The Trainer reads input and label names off the model's forward signature, and an
        # instrumented model's is (*args, **kwargs): it would drop every input column and
        # find no labels (so no evaluation loss or metrics).
        if args.remove_unused_columns or args.label_names is None:
            raise ValueError(
                "the Trainer cannot read an instrumented model's argument names: set "
                "TrainingArguments(remove_unused_columns=False, label_names=['labels'])"
            )
        self._start(model, optimizer, lr_scheduler, self.decisions or evaluations(args, state))
        self._training = True

    def on_train_end(self, args, state, control, **kwargs):
        self._training = False

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        self.gardener.after_backward()

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if not self._training:  # trainer.evaluate() after training decides nothing
            return
        trained = next((r for r in reversed(state.log_history) if self.names["train_loss"] in r), {})
        self._decide({**trained, **(metrics or {})})
