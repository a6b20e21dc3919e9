"""The batched runner: K hosts trained as one vmapped model match K hosts trained one by one."""

from __future__ import annotations

import dataclasses
import os

import pytest
import torch
from torch import nn

from esper.data.splits import TensorData
from esper.kasmina.hosts import reinitialized_copies
from esper.leyline import Edit, Op
from esper.simic.batched import StackCache, StackedHosts, batching_problem, host_graph, slot_chains, step_together
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
# Everything runs in float64, so that a difference between the runners means a bug, not
# summation order. The runners' arithmetic differs only in order (vmap turns the K
# convolutions into one grouped convolution). float64 rounds to u = 2^-53 ~ 1.1e-16
# relative; a sum of n terms is exact to ~n u sum|terms|, so a gradient differs by a
# relative delta of at most ~1e-13 (n up to 1e3). AdamW's step lr m/(sqrt(v) + eps) is
# scale-free in the gradient, so it moves by ~lr delta, and each update rounds at u |p|:
# after N = 12 optimizer steps (4 chunks of 3 batches) a parameter of size <= 1 differs by
# N (lr delta + u) ~ 12 (2e-3 1e-13 + 1.1e-16) ~ 1.4e-15, before any growth through the
# training dynamics. Measured: parameters 2.3e-16, buffers 1.4e-15, Adam state 7e-17,
# losses 2e-16 relative. TOL = 1e-12 leaves a factor of ~700 over the bound for that
# growth, while a real difference (a skipped step, a learning rate off by one part in a
# million) moves a parameter by lr 1e-6 = 2e-9 or more (that learning rate: 2e-5 here).
# (In float32, u ~ 6e-8 and Adam turns gradients that are pure rounding noise into whole
# steps of size lr: which CPU kernels run decides the result to ~1e-4.)
TOL = 1e-12
# ESPER_TEST_DEVICE=cuda runs this file on a GPU.
DEVICE = torch.device(os.environ.get("ESPER_TEST_DEVICE", "cpu"))


@pytest.fixture(scope="module", autouse=True)
def float64():
    """Hosts, and the seeds that take their dtype, in float64; the images come in it too."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


@pytest.fixture(scope="module")
def toy64(toy):
    double = lambda part: TensorData(part.x.double(), part.y)  # noqa: E731
    return dataclasses.replace(toy, train=double(toy.train), val=double(toy.val), test=double(toy.test))


def bias_free_cnn() -> nn.Module:
    """TinyCNN without the conv biases in front of BatchNorm: their true gradient is zero,
    so Adam turns rounding noise (~1e-17 even in float64) into steps of up to lr x noise /
    eps, and two runners that round differently would drift apart for reasons unrelated
    to batching (measured with the biases: 1.5e-10)."""
    model = TinyCNN()
    for block in (model.block1, model.block2):
        block[0].bias = None
    return model


def make_envs(toy, k=3, **cfg):
    cfg = EnvConfig(training_ticks=None, epochs=4, batch_size=32, blend_steps=1, **cfg)
    return [GrowthEnv(reinitialized_copies(bias_free_cnn()), toy, cfg, device=DEVICE) for _ in range(k)]


def play(toy, runner, poison=None, where="output", cache=None, sequential_at=()):
    """Run PLANS; `poison` (an env index) makes that env's block2 seed non-finite once it
    trains: its output (all weights NaN) or only its gradients (a hook). With `cache`, the
    batched steps go through step_together with it, and the steps in `sequential_at` are
    each environment's own GrowthEnv.step; returns the StackedHosts of each step too."""
    envs = make_envs(toy)
    venv = VectorEnv(envs, runner=runner)
    venv.reset([10, 11, 12])
    assert venv.batched is (runner == "batched")
    steps, stacks = [], []
    for t in range(4):
        if poison is not None and t == 2:
            for p in envs[poison].plane.seed_parameters("block2"):
                if where == "output":
                    p.data.fill_(float("nan"))
                else:
                    p.register_hook(lambda g: torch.full_like(g, float("nan")))
        edits = [plan[t] for plan in PLANS]
        if t in sequential_at:
            results = [env.step(edit) for env, edit in zip(envs, edits)]
        else:
            results = step_together(envs, edits, cache) if cache is not None else venv.step(edits)
        stacks.append(cache.hosts if cache is not None else None)
        steps.append([{k: getattr(r.info, k) for k in ("train_loss", "train_acc", "val_loss", "val_acc")} for r in results])
    return envs, steps, stacks


def close(a: torch.Tensor, b: torch.Tensor, name: str) -> None:
    torch.testing.assert_close(a, b, atol=TOL, rtol=0, msg=lambda m: f"{name}: {m}")


def assert_same(env_a, env_b, steps_a, steps_b, index):
    for t, (a, b) in enumerate(zip(steps_a, steps_b)):
        for key in ("train_loss", "val_loss"):
            assert a[index][key] == pytest.approx(b[index][key], rel=TOL, abs=0), f"env {index} step {t} {key}"
        for key in ("train_acc", "val_acc"):
            assert a[index][key] == b[index][key], f"env {index} step {t} {key}"
    params_a, params_b = dict(env_a.mm.named_parameters()), dict(env_b.mm.named_parameters())
    assert params_a.keys() == params_b.keys()
    for name, p in params_a.items():
        close(p, params_b[name], f"env {index} {name}")
    buffers_b = dict(env_b.mm.named_buffers())
    for name, buf in env_a.mm.named_buffers():
        close(buf, buffers_b[name], f"env {index} {name}")
    assert [e.to_dict() for e in env_a.plane.edits] == [e.to_dict() for e in env_b.plane.edits]
    opt_a, opt_b = env_a.trainer.optimizer, env_b.trainer.optimizer
    assert [g["lr"] for g in opt_a.param_groups] == [g["lr"] for g in opt_b.param_groups]
    for (name, pa), pb in zip(params_a.items(), params_b.values()):
        assert opt_a.state[pa].keys() == opt_b.state[pb].keys(), f"env {index} {name}"
        for key, value in opt_a.state[pa].items():
            close(value, opt_b.state[pb][key], f"env {index} {name} {key}")


@pytest.fixture(scope="module")
def sequential(toy64):
    return play(toy64, "sequential")


def test_batched_training_matches_sequential_training(toy64, sequential):
    seq_envs, seq, _ = sequential
    bat_envs, bat, stacks = play(toy64, "batched", cache=StackCache())
    for i in range(3):
        assert_same(seq_envs[i], bat_envs[i], seq, bat, i)
    assert all(p.dtype == torch.float64 for env in bat_envs for p in env.mm.parameters())
    assert bat_envs[0].plane.slots["block1"].stage.name == "FOSSILIZED"
    assert slot_chains(bat_envs[0].mm)["block1"] == ["plane.block1.seed", "plane.block1_1"]
    # The cut is kept through germinations and advances; the fossil at the last step recuts it.
    assert stacks[0] is stacks[1] is stacks[2] is not stacks[3]


def test_a_kept_cut_takes_up_what_the_sequential_runner_did_in_between(toy64, sequential):
    """The stacked values are copied in from the environments before every chunk, even
    when the cut is kept: here the sequential runner trains every other step."""
    seq_envs, seq, _ = sequential
    cache = StackCache()
    mix_envs, mix, stacks = play(toy64, "batched", cache=cache, sequential_at=(1, 3))
    assert stacks[0] is stacks[2]
    for i in range(3):
        assert_same(seq_envs[i], mix_envs[i], seq, mix, i)


def test_the_comparison_sees_a_learning_rate_off_by_one_part_in_a_million(toy64, sequential, monkeypatch):
    step = StackedHosts.step
    monkeypatch.setattr(StackedHosts, "step", lambda self, lr: step(self, lr * (1 + 1e-6)))
    seq_envs, seq, _ = sequential
    bat_envs, bat, _ = play(toy64, "batched")
    with pytest.raises(AssertionError):
        assert_same(seq_envs[0], bat_envs[0], seq, bat, 0)
    gap = max((p - q).abs().max().item() for p, q in zip(seq_envs[0].mm.parameters(), bat_envs[0].mm.parameters()))
    assert gap > 1e3 * TOL  # far outside the tolerance, not at its edge


@pytest.mark.parametrize("where", ["output", "gradient"])
def test_a_nan_seed_is_culled_in_its_own_environment_and_the_others_train_on(toy64, where):
    seq_envs, seq, _ = play(toy64, "sequential", poison=1, where=where)
    bat_envs, bat, _ = play(toy64, "batched", poison=1, where=where)
    slot = bat_envs[1].plane.slots["block2"]
    assert slot.stage.name in ("CULLED", "DORMANT") and any(f"non-finite seed {where}" in e for e in slot.events)
    for i in range(3):
        assert_same(seq_envs[i], bat_envs[i], seq, bat, i)
    assert all(torch.isfinite(p).all() for env in bat_envs for p in env.mm.parameters())


def test_host_graph_collapses_each_chain_to_one_site(toy64):
    env = make_envs(toy64, k=1)[0]
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


def test_batching_problems_are_named_and_auto_falls_back(toy64):
    hooked = [
        GrowthEnv(reinitialized_copies(Untraceable()), toy64, EnvConfig(training_ticks=None, epochs=1, batch_size=32), device=DEVICE)
        for _ in range(2)
    ]
    with pytest.raises(ValueError, match="hooks"):
        VectorEnv(hooked, runner="batched").reset([0, 1])
    venv = VectorEnv(hooked, runner="auto")
    venv.reset([0, 1])
    assert not venv.batched
    tiny = GrowthEnv(
        reinitialized_copies(TinyCNN()), toy64, EnvConfig(training_ticks=None, epochs=4, batch_size=32, blend_steps=1), device=DEVICE
    )
    mixed = make_envs(toy64, k=1) + [tiny]
    for i, env in enumerate(mixed):
        env.reset(i)
    assert batching_problem(mixed) == "the hosts differ in architecture"
    other = make_envs(toy64, k=1) + make_envs(toy64, k=1, augment=True)
    for i, env in enumerate(other):
        env.reset(i)
    assert batching_problem(other) == "the environments train with different augment"
    other = make_envs(toy64, k=1) + make_envs(toy64, k=1, lr=1e-3)
    for i, env in enumerate(other):
        env.reset(i)
    assert batching_problem(other) == "the environments train with different lr"
    with pytest.raises(ValueError, match="runner must be one of"):
        VectorEnv(hooked, runner="parallel")


def test_auto_batches_only_on_cuda(toy64):
    venv = VectorEnv(make_envs(toy64, k=2), runner="auto")
    venv.reset([0, 1])
    assert venv.batched is (venv.envs[0].device.type == "cuda")


def test_a_transformer_on_a_sequence_task_batches_too():
    from esper.data.splits import load_data
    from tests.helpers import TinyGPT

    data = load_data("seq-synthetic", limit=128, progress=False)
    cfg = EnvConfig(training_ticks=None, epochs=2, batch_size=32, blend_steps=1)
    runs = {}
    for runner in ("sequential", "batched"):
        envs = [GrowthEnv(reinitialized_copies(TinyGPT()), data, cfg, device=DEVICE) for _ in range(2)]
        venv = VectorEnv(envs, runner=runner)
        slot = venv.reset([1, 2])[0].slot_ids[-1]
        steps = [venv.step([Edit(G, slot, "mlp", "linear", 1), Edit(W)]), venv.step([Edit(A, slot), Edit(W)])]
        runs[runner] = ([r.info.train_loss for rs in steps for r in rs], [e.plane.edits for e in envs])
    assert venv.batched
    (seq_losses, seq_edits), (bat_losses, bat_edits) = runs["sequential"], runs["batched"]
    assert bat_losses == pytest.approx(seq_losses, rel=TOL, abs=0) and bat_edits == seq_edits
