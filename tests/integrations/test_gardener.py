"""Gardener: growth decided and applied inside a training loop the user writes."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import esper
from esper.graph import eval_mode
from esper.leyline import Edit, Op, SeedStage, UsageError
from esper.simic.host_training import probe_accuracy
from esper.simic.training import TrainConfig, save_policy
from esper.tamiyo import TamiyoPolicy
from tests.integrations.helpers import Scripted, grow, tiny
from tests.simic.toys import TinyCNN

S = SeedStage
EPOCHS = 8


@pytest.fixture(scope="module")
def grown(tmp_path_factory):
    """The README's loop on the synthetic task: a small CNN, AdamW, the heuristic, 8 epochs."""
    from esper.data.splits import load_data

    data = load_data("synthetic", limit=1200, progress=False)
    torch.manual_seed(0)
    mm = esper.instrument(TinyCNN(10), (data.train.x[:2],))
    opt = torch.optim.AdamW(mm.parameters(), lr=3e-3)
    x_probe, y_probe = data.train.x[:256], data.train.y[:256]

    # The seed's effect on the training loss it learned from: on a task this small and hard
    # for the host, a validation accuracy difference of a few images would decide by chance.
    def probe(model):
        return -F.cross_entropy(model(x_probe), y_probe).item()

    def validation():
        with eval_mode(mm), torch.no_grad():
            out = mm(data.val.x)
        return {"val_loss": F.cross_entropy(out, data.val.y), "val_acc": (out.argmax(-1) == data.val.y).float().mean()}

    gardener = esper.Gardener(mm, "heuristic", optimizer=opt, probe=probe, epochs=EPOCHS, initial_metrics=validation())
    for _ in range(EPOCHS):
        mm.train()
        loss_sum = correct = 0.0
        for x, y in data.train.batches(64, shuffle=True):
            out = mm(x)
            loss = F.cross_entropy(out, y)
            opt.zero_grad()
            loss.backward()
            gardener.after_backward()
            opt.step()
            loss_sum += loss.item() * len(y)
            correct += (out.argmax(-1) == y).sum().item()
        gardener.step(train_loss=loss_sum / len(data.train), train_acc=correct / len(data.train), **validation())
    return mm, gardener, data.train.x[:2], tmp_path_factory.mktemp("grown")


def structure(mm) -> tuple[dict, dict]:
    slots = {i: (s.stage, s.blueprint) for i, s in mm.plane.slots.items()}
    return slots, {k: tuple(v.shape) for k, v in mm.state_dict().items()}


def test_the_heuristic_germinates_blends_and_fossilizes_a_seed_in_a_plain_loop(grown):
    mm, gardener, _, _ = grown
    slot = gardener.edits[0].slot
    moves = [e.op for e in gardener.edits if e.slot == slot]  # the plane advances the seed; the heuristic fossilizes it
    assert moves == [Op.GERMINATE, Op.ADVANCE, Op.ADVANCE, Op.FOSSILIZE]
    assert sorted({e.tick for e in gardener.edits}) == list(range(EPOCHS))  # decision 0 before training, then one per epoch
    stages = [row[slot][0] for row in gardener.timeline]
    assert "BLENDING" in stages and "FOSSILIZED" in stages  # it trains within the interval it was germinated for
    assert mm.plane.slot(slot).stage is S.FOSSILIZED and f"{slot}+1" in mm.plane.slots
    # Fossilized only because the seed helped: it trained through the user's optimizer.
    assert gardener.contributions[slot] > 0


def test_the_edit_log_replays_to_the_same_structure(grown):
    mm, gardener, example, _ = grown
    again = esper.replay(TinyCNN(10), (example,), gardener.edits, spec=mm.spec)
    assert structure(again) == structure(mm)


def test_the_report_is_the_one_esper_grow_writes(grown):
    mm, gardener, example, out = grown
    text = gardener.save(out).read_text()
    for name in ("accuracy.png", "slots.png", "params.png", "edits.yaml", "metrics.jsonl", "summary.json", "model"):
        assert (out / name).exists() and name in text
    fossils = [e for e in gardener.edits if e.op is Op.FOSSILIZE]
    assert f"{len(fossils)} fossilized (depthwise" in text and len(fossils) >= 1
    summary = json.loads((out / "summary.json").read_text())
    assert summary["host"] == "TinyCNN" and summary["params"] > summary["host_params"]
    assert structure(esper.replay(TinyCNN(10), (example,), out / "edits.yaml", spec=mm.spec)) == structure(mm)


def test_decision_0_comes_before_training_and_each_step_observes_the_metrics_given():
    mm, opt, _ = tiny()
    policy = Scripted(grow("block2", steps=2))
    gardener = esper.Gardener(mm, policy, optimizer=opt, epochs=4, initial_metrics={"val_loss": 1.4, "val_acc": 0.25}, training_ticks=None)
    opening = policy.seen[0]
    assert opening.global_feature("progress") == 0 and opening.global_feature("delta_1_known") == 0
    # before training, the training-set numbers are the validation numbers (as in esper grow)
    # against chance, read off the classifier's 4 outputs: 0.25 is guessing
    assert opening.global_feature("val_acc") == 0 == opening.global_feature("train_acc")
    assert opening.global_feature("classes_known") == 1 and opening.global_feature("val_loss") == pytest.approx(1.4 / math.log(4))
    assert mm.plane.edits[-1] == Edit(Op.GERMINATE, "block2", "depthwise", "linear", 2, tick=0) and mm.plane.ticks == 0
    assert any("esper_slot" in group for group in opt.param_groups)  # the seed joined the user's optimizer
    advanced = gardener.step(train_loss=1.2, val_loss=1.0, val_acc=0.5)  # a task without training accuracy
    obs = policy.seen[1]
    assert obs.global_feature("progress") == pytest.approx(0.25)
    assert obs.global_feature("val_acc") == pytest.approx((0.5 - 0.25) / 0.75) and obs.global_feature("train_acc") == 0
    assert obs.global_feature("delta_1_known") == 1 and obs.global_feature("val_acc_delta_1") > 0
    assert obs.stages()[obs.slot_ids.index("block2")] is S.GERMINATED
    assert advanced == Edit(Op.ADVANCE, "block2", tick=1) and mm.plane.ticks == 1
    assert gardener.step(train_loss=torch.tensor(1.0), val_loss=0.9, val_acc=torch.tensor(0.6)).tick == 2
    gardener.step()
    assert gardener.step() is None and gardener.done  # the last step closes the run: no edit after training
    assert [e.tick for e in gardener.edits] == [0, 1, 2, 3] and len(gardener.records) == 4
    with pytest.raises(RuntimeError, match="planned for 4 steps"):
        gardener.step()


def test_a_blending_seed_is_measured_on_the_probe_and_its_fossil_keeps_the_value():
    mm, opt, data = tiny()
    policy = Scripted(grow("block2") + [Edit(Op.WAIT), Edit(Op.FOSSILIZE, "block2")])
    x, y = data.val.x, data.val.y
    gardener = esper.Gardener(mm, policy, optimizer=opt, probe=(x, y), epochs=6, training_ticks=None)
    for _ in range(2):  # decision 0 germinated; these advance to TRAINING, then BLENDING
        gardener.step()
    with torch.no_grad():  # a host whose predictions vary, and a seed that changes them
        mm.head.weight.normal_(0, 3)
        for p in mm.plane.seed_parameters("block2"):
            p.normal_()
    gardener.step()  # the tick takes alpha to 1; then the probe
    assert mm.training  # scored in eval mode, left as it was
    mm.eval()
    with_seed = probe_accuracy(mm, x, y)
    with mm.plane.ablate("block2"):
        without = probe_accuracy(mm, x, y)
    assert with_seed != without and gardener.contributions == {"block2": pytest.approx(with_seed - without)}
    gardener.step()  # FOSSILIZE
    gardener.step()
    assert mm.plane.slot("block2").stage is S.FOSSILIZED
    assert gardener.contributions["block2"] == pytest.approx(with_seed - without)
    assert policy.seen[-1].slot_feature("contribution_known")[policy.seen[-1].slot_ids.index("block2")] == 1


def test_after_backward_culls_a_seed_with_non_finite_gradients_and_its_group_leaves():
    mm, opt, data = tiny()
    gardener = esper.Gardener(mm, Scripted(grow("block2")), optimizer=opt, epochs=4, training_ticks=None)
    gardener.step()  # TRAINING: the seed learns from the task loss
    F.cross_entropy(mm(data.train.x[:8]), data.train.y[:8]).backward()
    mm.plane.seed_parameters("block2")[0].grad.fill_(float("nan"))
    assert gardener.after_backward() == ["block2"]
    assert all("esper_slot" not in group for group in opt.param_groups)
    assert gardener.edits[-1].op is Op.CULL


class RunsCode:
    """Unpickling this object would create a file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (self.marker,)


def test_a_trained_policy_loads_by_path_without_unpickling_code(tmp_path):
    cfg = TrainConfig(hidden=16).resolved()
    save_policy(TamiyoPolicy(cfg.vocabulary, hidden=16), tmp_path / "tamiyo.pt", cfg, episodes=0)
    mm, opt, _ = tiny()
    gardener = esper.Gardener(mm, str(tmp_path / "tamiyo.pt"), optimizer=opt, epochs=2)
    assert isinstance(gardener.policy, TamiyoPolicy) and list(gardener.vocab.blueprints) == cfg.blueprints
    assert gardener.step(val_acc=0.5) == mm.plane.edits[-1]
    marker = tmp_path / "ran"
    torch.save(RunsCode(marker), tmp_path / "evil.pt")
    with pytest.raises(UsageError, match="not a Tamiyo policy"):
        esper.Gardener(mm, tmp_path / "evil.pt", optimizer=opt, epochs=2)
    assert not marker.exists()


def test_wrong_inputs_say_what_to_do():
    mm, opt, _ = tiny()
    with pytest.raises(TypeError, match="esper.instrument"):
        esper.Gardener(TinyCNN(), optimizer=opt, epochs=2)
    with pytest.raises(UsageError, match="no such file, and not one of the built-in policies heuristic, random, tamiyo, wait"):
        esper.Gardener(mm, "heuristics", optimizer=opt, epochs=2)
    gardener = esper.Gardener(mm, "random", optimizer=opt, epochs=2, seed=0)
    with pytest.raises(ValueError, match="fractions"):
        gardener.step(val_acc=45.0)
    assert mm.plane.ticks == 0 and not gardener.records  # refused before anything changed
    with pytest.raises(RuntimeError, match="call step"):
        gardener.save("unused")


def test_a_run_too_short_to_fossilize_any_seed_says_so_at_start_up():
    import warnings

    from esper.simic.loop import ShortRunWarning

    mm, opt, _ = tiny()
    # germinate at decision 0, train 1 tick, blend 2, fossilize at decision 3: 4 decisions
    with pytest.warns(ShortRunWarning, match=r"3 decisions cannot fossilize any seed.*take 4.*decisions_per_epoch"):
        esper.Gardener(mm, "heuristic", optimizer=opt, epochs=3)
    mm, opt, _ = tiny()
    with warnings.catch_warnings():
        warnings.simplefilter("error", ShortRunWarning)
        esper.Gardener(mm, "heuristic", optimizer=opt, epochs=2, decisions_per_epoch=2)
