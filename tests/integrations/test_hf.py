"""GardenerCallback inside a HuggingFace transformers.Trainer on a tiny BERT classifier."""

from __future__ import annotations

import pytest
import torch

import esper
from esper.integrations.gardener import Gardener
from esper.leyline import Op
from tests.integrations.helpers import Scripted, count_calls, grow

pytest.importorskip("accelerate", reason="transformers.Trainer needs accelerate (in the test extra)")
from transformers import BertConfig, BertForSequenceClassification, Trainer, TrainingArguments  # noqa: E402

from esper.integrations.hf import GardenerCallback  # noqa: E402


def accuracy(prediction) -> dict:
    return {"accuracy": float((prediction.predictions.argmax(-1) == prediction.label_ids).mean())}


def trainer(tmp_path, callback, **args) -> Trainer:
    torch.manual_seed(0)
    config = BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                        vocab_size=100, num_labels=2, use_cache=False)
    ids = torch.randint(0, 100, (64, 12))
    mm = esper.instrument(BertForSequenceClassification(config), example_inputs=(ids[:2],))
    data = [{"input_ids": i, "labels": label} for i, label in zip(ids, (ids[:, 0] > 50).long())]
    settings = dict(output_dir=str(tmp_path), use_cpu=True, report_to="none", save_strategy="no", disable_tqdm=True,
                    max_steps=8, per_device_train_batch_size=16, learning_rate=1e-3, lr_scheduler_type="constant",
                    eval_strategy="steps", eval_steps=2, logging_steps=1, remove_unused_columns=False,
                    label_names=["labels"])
    return Trainer(model=mm, args=TrainingArguments(**{**settings, **args}), train_dataset=data,
                   eval_dataset=data[:16], compute_metrics=accuracy, callbacks=[callback])


def test_the_trainer_grows_a_seed_deciding_at_each_evaluation(tmp_path, monkeypatch):
    slot = "bert.encoder.layer.1"
    guarded = count_calls(monkeypatch, Gardener, "after_backward")
    policy = Scripted(grow(slot, "lora", steps=2))
    callback = GardenerCallback(policy, seed_lr_scale=0.5)
    hf = trainer(tmp_path, callback)
    hf.train()
    gardener = callback.gardener
    assert gardener.epochs == 4  # 8 steps, an evaluation every 2
    assert [(e.op, e.tick) for e in gardener.edits] == [(Op.GERMINATE, 1), (Op.ADVANCE, 2), (Op.ADVANCE, 3), (Op.WAIT, 4)]
    evaluated = [r["eval_accuracy"] for r in hf.state.log_history if "eval_accuracy" in r]
    assert [o.global_feature("val_acc") for o in policy.seen] == pytest.approx(evaluated)
    assert all(o.global_feature("train_loss") > 0 for o in policy.seen)
    # The seed joined the Trainer's optimizer, its scheduler kept stepping, and it trained.
    groups = hf.optimizer.param_groups
    seed_groups = [g for g in groups if g.get("esper_slot") == slot]
    assert len(seed_groups) == 1 and seed_groups[0]["lr"] == pytest.approx(0.5 * groups[0]["lr"])
    assert all(hf.optimizer.state[p] for p in seed_groups[0]["params"])
    assert len(guarded) == hf.state.global_step  # before every optimizer step
    hf.evaluate()
    assert len(gardener.edits) == 4  # an evaluation after training decides nothing


def test_a_trainer_that_would_drop_the_inputs_is_refused(tmp_path):
    hf = trainer(tmp_path, GardenerCallback(Scripted()), remove_unused_columns=True)
    with pytest.raises(ValueError, match="remove_unused_columns=False"):
        hf.train()
