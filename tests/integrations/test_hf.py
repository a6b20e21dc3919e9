"""GardenerCallback inside a HuggingFace transformers.Trainer on a tiny BERT classifier, and
the host attributes the Trainer reads through an instrumented model."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

import esper
from esper.integrations.gardener import Gardener
from esper.kasmina.model import MorphogeneticModel
from esper.leyline import Op
from tests.helpers import ROOT, tiny_bert
from tests.integrations.helpers import Scripted, against_chance, count_calls, grow

pytest.importorskip("accelerate", reason="transformers.Trainer needs accelerate (in the test extra)")
from transformers import BertConfig, BertForSequenceClassification, Trainer, TrainingArguments  # noqa: E402

from esper.integrations.hf import HOST_ATTRIBUTES, GardenerCallback  # noqa: E402


def accuracy(prediction) -> dict:
    return {"accuracy": float((prediction.predictions.argmax(-1) == prediction.label_ids).mean())}


def trainer(tmp_path, callback, **args) -> Trainer:
    torch.manual_seed(0)
    config = BertConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, vocab_size=100, num_labels=2, use_cache=False
    )
    ids = torch.randint(0, 100, (64, 12))
    mm = esper.instrument(BertForSequenceClassification(config), example_inputs=(ids[:2],))
    data = [{"input_ids": i, "labels": label} for i, label in zip(ids, (ids[:, 0] > 50).long())]
    settings = dict(
        output_dir=str(tmp_path),
        use_cpu=True,
        report_to="none",
        save_strategy="no",
        disable_tqdm=True,
        max_steps=8,
        per_device_train_batch_size=16,
        learning_rate=1e-3,
        lr_scheduler_type="constant",
        eval_strategy="steps",
        eval_steps=2,
        logging_steps=1,
        remove_unused_columns=False,
        label_names=["labels"],
    )
    return Trainer(
        model=mm,
        args=TrainingArguments(**{**settings, **args}),
        train_dataset=data,
        eval_dataset=data[:16],
        compute_metrics=accuracy,
        callbacks=[callback],
    )


def test_the_trainer_grows_a_seed_deciding_at_each_evaluation(tmp_path, monkeypatch):
    slot = "bert.encoder.layer.1"
    guarded = count_calls(monkeypatch, Gardener, "after_backward")
    policy = Scripted(grow(slot, "lora", steps=2))
    callback = GardenerCallback(policy, seed_lr_scale=0.5, training_ticks=None)  # the script advances its seed
    hf = trainer(tmp_path, callback)
    hf.train()
    gardener = callback.gardener
    assert gardener.epochs == 4  # 8 steps, an evaluation every 2
    # decision 0 when training begins, then one per closed interval but the last
    assert [(e.op, e.tick) for e in gardener.edits] == [(Op.GERMINATE, 0), (Op.ADVANCE, 1), (Op.ADVANCE, 2), (Op.WAIT, 3)]
    evaluated = [r["eval_accuracy"] for r in hf.state.log_history if "eval_accuracy" in r]
    assert [o.global_feature("val_acc") for o in policy.seen[1:]] == pytest.approx(against_chance(evaluated[:-1], 2))  # two labels
    assert all(o.global_feature("train_loss") > 0 for o in policy.seen[1:]) and gardener.done
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


def test_what_the_trainer_reads_is_read_through_to_the_host():
    model, ids = tiny_bert()
    mm = esper.instrument(model, (ids,))
    assert set(HOST_ATTRIBUTES) <= MorphogeneticModel.host_attributes
    assert mm.config is model.config and mm.main_input_name == model.main_input_name == "input_ids"
    assert mm.num_parameters() == model.num_parameters() and mm.dtype == model.dtype and not mm.can_generate()
    with pytest.raises(AttributeError, match="the host's own attributes are at .host.generate"):
        mm.generate  # the host's would run without the seeds


def test_the_names_are_forwarded_once_this_module_is_imported_and_not_before():
    code = (
        "import esper, torch\n"
        "from tests.helpers import tiny_bert\n"
        "model, ids = tiny_bert()\n"
        "mm = esper.instrument(model, (ids,))\n"
        "assert not hasattr(mm, 'config')\n"
        "import esper.integrations.hf\n"
        "assert mm.config is model.config\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-2000:]
