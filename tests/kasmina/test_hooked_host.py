"""The hook path (hosts torch.fx cannot trace, BERT-style): isolation, checkpoints and replay."""

import copy

import torch

import esper
from tests.helpers import grads, outputs_equal, tiny_bert


def _hooked():
    model, ids = tiny_bert()
    mm = esper.instrument(model, (ids,))
    assert mm.kind == "hooks"  # slots hooked onto modules, not an fx graph: otherwise this file tests nothing new
    return model, ids, mm


def _perturb(slot):
    torch.manual_seed(1)
    for p in slot.seed_parameters():  # zero-initialised projections would hide a missing seed
        torch.nn.init.normal_(p, std=0.3)


def test_host_gradients_are_bit_identical_with_a_training_seed():
    model, ids, mm = _hooked()
    twin = copy.deepcopy(model).train()
    sid = "encoder.layer.1"
    mm.plane.germinate(sid, "mlp")
    mm.plane.advance(sid)
    slot = mm.plane.slots[sid]
    _perturb(slot)
    mm.train()
    torch.manual_seed(0)  # the same dropout masks in both
    out = mm(ids).last_hidden_state
    torch.manual_seed(0)
    ref = twin(ids).last_hidden_state
    assert torch.equal(out, ref)
    out.square().mean().backward()
    ref.square().mean().backward()
    host = {n: g for n, g in grads(mm).items() if not n.startswith("plane.")}
    assert host.keys() == grads(twin).keys() and all(torch.equal(host[n], g) for n, g in grads(twin).items())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in slot.seed_parameters())


def _grown():
    model, ids, mm = _hooked()
    p = mm.plane
    p.germinate("encoder.layer.1", "mlp", blend="gated", steps=2)
    p.advance("encoder.layer.1"), p.advance("encoder.layer.1")
    p.germinate("encoder.layer.2", "lora", steps=3)
    p.advance("encoder.layer.2")
    p.step()
    p.advance("encoder.layer.2")
    p.step()
    p.fossilize("encoder.layer.1")
    for slot in p.slots.values():
        if slot.seed is not None:
            _perturb(slot)
    return ids, mm.eval()


def test_fossilizing_at_alpha_one_keeps_the_output(float64):
    # The blend computes h + 1 * (s - h), the fossil s: equal up to rounding, ~1e-16 in
    # float64, so torch's float64 tolerance (1e-7) shows any other difference.
    _, ids, mm = _hooked()
    sid = "encoder.layer.1"
    mm.plane.germinate(sid, "mlp", blend="gated", steps=1)
    mm.plane.advance(sid), mm.plane.advance(sid)
    _perturb(mm.plane.slots[sid])
    mm.plane.step()
    mm.eval()
    before = mm(ids).last_hidden_state
    mm.plane.fossilize(sid)
    assert before.dtype == torch.float64
    torch.testing.assert_close(mm(ids).last_hidden_state, before)
    assert not torch.allclose(before, mm.host(ids).last_hidden_state, atol=1e-3)


def test_save_and_load_give_the_same_outputs(tmp_path):
    ids, mm = _grown()
    esper.save(mm, tmp_path / "bert")
    loaded = esper.load(tmp_path / "bert", host=tiny_bert()[0]).eval()
    assert loaded.kind == "hooks"
    assert [(i, s.stage, s.alpha) for i, s in loaded.plane.slots.items()] == [(i, s.stage, s.alpha) for i, s in mm.plane.slots.items()]
    assert outputs_equal(loaded(ids), mm(ids))
    assert not torch.allclose(mm(ids).last_hidden_state, mm.host(ids).last_hidden_state, atol=1e-3)


def test_replay_rebuilds_the_same_model():
    ids, mm = _grown()
    again = esper.replay(tiny_bert()[0], (ids,), mm.plane.edits, spec=mm.spec)
    assert again.plane.ticks == mm.plane.ticks and again.plane.edits == mm.plane.edits
    assert {n: t.shape for n, t in again.state_dict().items()} == {n: t.shape for n, t in mm.state_dict().items()}
    again.load_state_dict(mm.state_dict())  # replay builds the structure; the weights are the checkpoint's
    assert outputs_equal(again.eval()(ids), mm(ids))
