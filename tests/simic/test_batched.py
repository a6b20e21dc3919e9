"""The batched runner: K hosts trained as one vmapped model match K hosts trained one by one."""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn

from esper.leyline import Edit, Op
from esper.simic.batched import batching_problem, host_graph, slot_chains
from esper.kasmina.hosts import reinitialized_copies
from esper.simic.env import EnvConfig, GrowthEnv
from esper.simic.vectorized import VectorEnv
from tests.simic.toys import TinyCNN

G, A, F, W = Op.GERMINATE, Op.ADVANCE, Op.FOSSILIZE, Op.WAIT
# Three environments, seeds in different slots with different blueprints and blends, one
# fossil folded into the graph (a chain of two plane calls at 'block1') by the third step.
PLANS = [
    [Edit(G, "block1", "conv_enhance", "linear", 1), Edit(A, "block1"), Edit(A, "block1"), Edit(F, "block1")],
    [Edit(G, "block2", "norm", "gated", 1), Edit(A, "block2"), Edit(A, "block2"), Edit(W)],
    [Edit(W), Edit(G, "block1", "depthwise", "sigmoid", 1), Edit(A, "block1"), Edit(A, "block1")],
]
# vmap runs the K convolutions as one grouped convolution, which sums in another order:
# fp32 rounding (about 1e-7 relative) per step, compounded over a few optimizer steps.
# Measured: parameters within 6e-8 after four chunks; the bounds leave 100x margin.
PARAM_ATOL = 1e-5
LOSS_RTOL = 1e-5
# ESPER_TEST_DEVICE=cuda runs this file on a GPU (TF32 off: both runners in true fp32).
DEVICE = torch.device(os.environ.get("ESPER_TEST_DEVICE", "cpu"))


@pytest.fixture(autouse=True)
def true_fp32(monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    yield
    torch.set_float32_matmul_precision(previous)


def bias_free_cnn() -> nn.Module:
    """TinyCNN without the conv biases in front of BatchNorm: their true gradient is zero,
    so Adam turns rounding noise into steps of size lr, and two runners that round
    differently would drift apart by lr per step for reasons unrelated to batching."""
    model = TinyCNN()
    for block in (model.block1, model.block2):
        block[0].bias = None
    return model


def make_envs(toy, k=3, **cfg):
    cfg = EnvConfig(epochs=4, batch_size=32, blend_steps=1, **cfg)
    return [GrowthEnv(reinitialized_copies(bias_free_cnn()), toy, cfg, device=DEVICE) for _ in range(k)]


def play(toy, runner, poison=None, where="output"):
    """Run PLANS; `poison` (an env index) makes that env's block2 seed non-finite once it
    trains: its output (all weights NaN) or only its gradients (a hook)."""
    envs = make_envs(toy)
    venv = VectorEnv(envs, runner=runner)
    venv.reset([10, 11, 12])
    assert venv.batched is (runner == "batched")
    steps = []
    for t in range(4):
        if poison is not None and t == 2:
            for p in envs[poison].plane.seed_parameters("block2"):
                if where == "output":
                    p.data.fill_(float("nan"))
                else:
                    p.register_hook(lambda g: torch.full_like(g, float("nan")))
        results = venv.step([plan[t] for plan in PLANS])
        steps.append([{k: getattr(r.info, k) for k in ("train_loss", "train_acc", "val_loss", "val_acc")} for r in results])
    return envs, steps


def assert_same(env_a, env_b, steps_a, steps_b, index):
    for a, b in zip(steps_a, steps_b):
        for key in ("train_loss", "val_loss"):
            assert a[index][key] == pytest.approx(b[index][key], rel=LOSS_RTOL), key
        for key in ("train_acc", "val_acc"):
            assert a[index][key] == pytest.approx(b[index][key], abs=1e-9), key
    params_a, params_b = dict(env_a.mm.named_parameters()), dict(env_b.mm.named_parameters())
    assert params_a.keys() == params_b.keys()
    for name, p in params_a.items():
        torch.testing.assert_close(p, params_b[name], atol=PARAM_ATOL, rtol=0, msg=name)
    for name, buf in env_a.mm.named_buffers():
        torch.testing.assert_close(buf, dict(env_b.mm.named_buffers())[name], atol=PARAM_ATOL, rtol=0, msg=name)
    assert [e.to_dict() for e in env_a.plane.edits] == [e.to_dict() for e in env_b.plane.edits]
    opt_a, opt_b = env_a.trainer.optimizer, env_b.trainer.optimizer
    for pa, pb in zip(env_a.mm.parameters(), env_b.mm.parameters()):
        for key, value in opt_a.state[pa].items():
            torch.testing.assert_close(value, opt_b.state[pb][key], atol=PARAM_ATOL, rtol=0, msg=key)


def test_batched_training_matches_sequential_training(toy):
    seq_envs, seq = play(toy, "sequential")
    bat_envs, bat = play(toy, "batched")
    for i in range(3):
        assert_same(seq_envs[i], bat_envs[i], seq, bat, i)
    assert bat_envs[0].plane.slots["block1"].stage.name == "FOSSILIZED"
    assert slot_chains(bat_envs[0].mm)["block1"] == ["plane.block1.seed", "plane.block1_1"]


@pytest.mark.parametrize("where", ["output", "gradient"])
def test_a_nan_seed_is_culled_in_its_own_environment_and_the_others_train_on(toy, where):
    seq_envs, seq = play(toy, "sequential", poison=1, where=where)
    bat_envs, bat = play(toy, "batched", poison=1, where=where)
    slot = bat_envs[1].plane.slots["block2"]
    assert slot.stage.name in ("CULLED", "DORMANT") and any(f"non-finite seed {where}" in e for e in slot.events)
    for i in range(3):
        assert_same(seq_envs[i], bat_envs[i], seq, bat, i)
    assert all(torch.isfinite(p).all() for env in bat_envs for p in env.mm.parameters())


def test_host_graph_collapses_each_chain_to_one_site(toy):
    env = make_envs(toy, k=1)[0]
    env.reset(0)
    before, sites = host_graph(env.mm)
    original = sorted(env.plane.slots)
    for edit in PLANS[0]:
        env.plane.apply(edit)
    env.plane.step()
    after, _ = host_graph(env.mm)
    assert str(after) == str(before)  # a fossil does not change the host's cut
    assert sorted(sites.values()) == original  # one site per injection point
    assert len(env.plane.slots) == len(original) + 1  # while the plane opened a new slot


class Untraceable(nn.Module):
    """torch.fx cannot trace it, so slots are hooked onto its modules."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        h = self.body(x)
        if h.shape[-1] > 1:  # a Python branch on a traced value: fx stops, torch.export does not
            h = h.mean(dim=(2, 3))
        return self.head(h)


def test_batching_problems_are_named_and_auto_falls_back(toy):
    hooked = [GrowthEnv(reinitialized_copies(Untraceable()), toy, EnvConfig(epochs=1, batch_size=32), device=DEVICE)
              for _ in range(2)]
    with pytest.raises(ValueError, match="hooks"):
        VectorEnv(hooked, runner="batched").reset([0, 1])
    venv = VectorEnv(hooked, runner="auto")
    venv.reset([0, 1])
    assert not venv.batched
    tiny = GrowthEnv(reinitialized_copies(TinyCNN()), toy, EnvConfig(epochs=4, batch_size=32, blend_steps=1), device=DEVICE)
    mixed = make_envs(toy, k=1) + [tiny]
    for i, env in enumerate(mixed):
        env.reset(i)
    assert batching_problem(mixed) == "the hosts differ in architecture"
    other = make_envs(toy, k=1) + make_envs(toy, k=1, augment=True)
    for i, env in enumerate(other):
        env.reset(i)
    assert batching_problem(other) == "the environments train with different augment"
    with pytest.raises(ValueError, match="runner must be one of"):
        VectorEnv(hooked, runner="parallel")


def test_auto_batches_only_on_cuda(toy):
    venv = VectorEnv(make_envs(toy, k=2), runner="auto")
    venv.reset([0, 1])
    assert venv.batched is (venv.envs[0].device.type == "cuda")


def test_a_transformer_on_a_sequence_task_batches_too():
    from esper.data.splits import load_data
    from tests.helpers import TinyGPT

    data = load_data("seq-synthetic", limit=128, progress=False)
    cfg = EnvConfig(epochs=2, batch_size=32, blend_steps=1)
    runs = {}
    for runner in ("sequential", "batched"):
        envs = [GrowthEnv(reinitialized_copies(TinyGPT()), data, cfg, device=DEVICE) for _ in range(2)]
        venv = VectorEnv(envs, runner=runner)
        slot = venv.reset([1, 2])[0].slot_ids[-1]
        steps = [venv.step([Edit(G, slot, "mlp", "linear", 1), Edit(W)]), venv.step([Edit(A, slot), Edit(W)])]
        runs[runner] = ([r.info.train_loss for rs in steps for r in rs], [e.plane.edits for e in envs])
    assert venv.batched
    (seq_losses, seq_edits), (bat_losses, bat_edits) = runs["sequential"], runs["batched"]
    assert bat_losses == pytest.approx(seq_losses, rel=LOSS_RTOL) and bat_edits == seq_edits
