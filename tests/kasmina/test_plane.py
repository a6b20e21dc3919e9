"""The Kasmina plane: one owner of every slot, telemetry, and the lifecycle API."""

import pytest
import torch

import esper
from esper.leyline import SeedStage
from tests.helpers import HostCNN


@pytest.fixture
def mm():
    torch.manual_seed(0)
    return esper.instrument(HostCNN(), (torch.randn(4, 3, 32, 32),))


def test_one_plane_owns_every_slot(mm):
    planes = [m for m in mm.modules() if isinstance(m, esper.KasminaPlane)]
    assert planes == [mm.plane]
    slots = [m for m in mm.modules() if isinstance(m, esper.SeedSlot)]
    assert slots == list(mm.plane.slots.values())


def test_telemetry_is_plain_data_with_input_statistics(mm):
    mm.train()
    x = torch.randn(4, 3, 32, 32) * 3
    out = mm(x)
    out.sum().backward()
    tele = mm.plane.telemetry()
    assert [t["slot"] for t in tele] == ["block1", "block2", "block3"]
    for t in tele:
        assert t["stage"] == "DORMANT" and t["alpha"] == 0.0 and t["params"] == 0
        assert t["ticks_in_stage"] == 0
        assert isinstance(t["input_mean"], float) and t["input_std"] > 0
        assert t["grad_norm"] > 0
    relu_out = mm.block1(x)
    # The same op on the same bits (block1's output for the same batch): equal, not close.
    assert tele[0]["input_mean"] == relu_out.mean().item()


def test_lifecycle_walk_and_telemetry(mm):
    p = mm.plane
    p.germinate("block2", "conv_enhance", blend="sigmoid", steps=3)
    s = p.slots["block2"]
    assert s.stage is SeedStage.GERMINATED and s.param_count() > 0
    p.advance("block2")
    p.step()
    assert s.stage is SeedStage.TRAINING and s.ticks_in_stage == 1
    p.advance("block2")
    assert s.stage is SeedStage.BLENDING and s.alpha == 0.0
    for _ in range(3):
        p.step()
    assert s.alpha == pytest.approx(1.0)
    p.advance("block2")
    assert s.stage is SeedStage.FOSSILIZED
    t = {d["slot"]: d for d in p.telemetry()}["block2"]
    assert t["stage"] == "FOSSILIZED" and t["blueprint"] == "conv_enhance" and t["params"] == s.param_count()


def test_the_plane_moves_seeds_on_by_itself_and_logs_each_move(mm):
    from esper.kasmina.replay import replay
    from esper.leyline import Op

    p = mm.plane
    stages = lambda: {i: s.stage for i, s in p.slots.items() if s.stage is not SeedStage.DORMANT}  # noqa: E731
    p.germinate("block3", "depthwise", steps=2)
    assert [e.slot for e in p.advance_due(training_ticks=2)] == ["block3"]  # a germinated seed starts training at once
    p.step()
    assert p.advance_due(training_ticks=2) == []  # block3 has trained 1 of 2 ticks
    p.germinate("block2", "depthwise", steps=2)
    p.step()
    assert [e.slot for e in p.advance_due(training_ticks=2)] == ["block2", "block3"]
    assert stages() == {"block3": SeedStage.BLENDING, "block2": SeedStage.TRAINING}
    p.step(2)
    p.advance_due(training_ticks=2)
    p.step(2)
    p.advance_due(training_ticks=2)  # BLENDING is left to the policy: fossilize or cull
    assert stages() == {"block3": SeedStage.BLENDING, "block2": SeedStage.BLENDING}
    assert [(e.slot, e.tick) for e in p.edits if e.op is Op.ADVANCE] == [("block3", 0), ("block2", 2), ("block3", 2), ("block2", 4)]
    again = replay(HostCNN(), (torch.randn(4, 3, 32, 32),), p.edits, until_step=p.ticks)
    assert {i: (s.stage, s.ticks_in_stage) for i, s in again.plane.slots.items()} == {
        i: (s.stage, s.ticks_in_stage) for i, s in p.slots.items()
    }
    with pytest.raises(ValueError, match="at least 1 tick"):
        p.advance_due(training_ticks=0)


def test_illegal_moves_name_slot_stage_and_move(mm):
    with pytest.raises(esper.LifecycleError, match="slot 'block1' in stage DORMANT cannot ADVANCE"):
        mm.plane.advance("block1")
    mm.plane.germinate("block1", "norm")
    mm.plane.cull("block1")
    with pytest.raises(esper.LifecycleError, match="CULLED cannot GERMINATE"):
        mm.plane.germinate("block1", "norm")
    mm.plane.step()  # cooldown of one tick
    assert mm.plane.slots["block1"].stage is SeedStage.DORMANT
    mm.plane.germinate("block1", "norm")


def test_fossilized_is_final(mm):
    p = mm.plane
    p.germinate("block3", "attention", steps=1)
    p.advance("block3"), p.advance("block3")
    p.step()
    p.fossilize("block3")
    for move in (p.cull, p.advance, p.fossilize):
        with pytest.raises(esper.LifecycleError, match="fossilized seed is final"):
            move("block3")


def test_unknown_slot_lists_the_slots(mm):
    with pytest.raises(KeyError, match="block1, block2, block3"):
        mm.plane.germinate("nope", "norm")


def test_unknown_blueprint_and_wrong_rank_leave_the_slot_dormant(mm):
    with pytest.raises(KeyError, match="unknown blueprint 'nope'"):
        mm.plane.germinate("block1", "nope")
    with pytest.raises(esper.LifecycleError, match="'lora': its activations are 32x32x32 per sample, and it applies to rank \\[3\\]"):
        mm.plane.germinate("block1", "lora")
    assert mm.plane.slots["block1"].stage is SeedStage.DORMANT and mm.plane.edits == []


def test_module_moves_and_state_dict_behave(mm):
    mm.plane.germinate("block1", "depthwise")
    keys = list(mm.state_dict())
    assert any(k.startswith("plane.block1.seed.") for k in keys)
    mm.to(torch.float64)
    assert mm.plane.slots["block1"].seed.pointwise.weight.dtype == torch.float64
    assert mm.block1.conv.weight.dtype == torch.float64


def _blending(mm, slot_id="block2", blueprint="conv_enhance"):
    mm.plane.germinate(slot_id, blueprint, steps=2)
    mm.plane.advance(slot_id), mm.plane.advance(slot_id)
    mm.plane.step()
    for p in mm.plane.seed_parameters(slot_id):  # away from identity, so the seed shows in the output
        torch.nn.init.normal_(p, std=0.3)
    return mm.plane.slots[slot_id]


def test_ablate_takes_the_named_seeds_out_and_puts_them_back(mm):
    _blending(mm, "block2"), _blending(mm, "block3")
    mm.eval()
    x = torch.randn(2, 3, 32, 32)
    with_seeds = mm(x)
    host = mm.host(x)
    assert not torch.allclose(with_seeds, host, atol=1e-4)
    with mm.plane.ablate():
        assert torch.equal(mm(x), host)  # every seed out: the host bit for bit
    with mm.plane.ablate("block2"):
        only_block3 = mm(x)
    assert not torch.allclose(only_block3, host, atol=1e-4) and not torch.allclose(only_block3, with_seeds, atol=1e-4)
    with pytest.raises(RuntimeError), mm.plane.ablate("block3"):
        raise RuntimeError("a probe that fails")
    assert torch.equal(mm(x), with_seeds)  # back in, after a normal exit and after an exception


def test_telemetry_reports_the_seeds_gradient_norm(mm):
    slot = _blending(mm, blueprint="norm")  # three short tensors: a tight rounding bound below
    assert slot.telemetry().seed_grad_norm is None  # no backward yet
    mm.train()
    mm(torch.randn(4, 3, 32, 32)).square().mean().backward()
    grads = [p.grad for p in mm.plane.seed_parameters("block2")]
    exact = float(torch.cat([g.flatten() for g in grads]).double().norm())
    # The telemetry's fp32 norm of each of the K tensors (n elements summed in any order) is
    # within (n / 2 + 1) u of exact, the norm of those K norms adds K / 2 + 1: together
    # (n + K + 4) u / 2 with u = eps / 2. Twice that covers the second-order terms.
    n, k = max(g.numel() for g in grads), len(grads)
    assert slot.telemetry().seed_grad_norm == pytest.approx(exact, rel=(n + k + 4) * torch.finfo(torch.float32).eps / 2)
    assert mm.plane.slots["block1"].telemetry().seed_grad_norm is None  # dormant: no seed


def test_input_statistics_are_sampled_every_stats_every_calls(mm):
    from esper.kasmina.slot import STATS_EVERY

    slot = mm.plane.slots["block1"]
    mm.train()
    first = torch.randn(2, 3, 32, 32)
    mm(first).sum().backward()
    sampled = slot.telemetry()
    assert sampled.input_mean == mm.block1(first).mean().item()  # the same op on the same bits
    for _ in range(STATS_EVERY - 1):  # calls 1 .. STATS_EVERY-1 leave the sample alone
        mm(5 * torch.randn(2, 3, 32, 32) + 3)
    assert slot.telemetry().input_mean == sampled.input_mean and slot.telemetry().grad_norm == sampled.grad_norm
    again = 5 * torch.randn(2, 3, 32, 32) + 3
    mm(again).sum().backward()  # call STATS_EVERY: a fresh sample, and the gradient of this pass
    assert slot.telemetry().input_mean == mm.block1(again).mean().item()
    assert slot.telemetry().grad_norm != sampled.grad_norm
