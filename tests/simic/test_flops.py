"""Training FLOPs: every step's forward and backward, each seed counted only while it computes."""

from __future__ import annotations

import copy
from contextlib import nullcontext

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import esper
from esper.kasmina.hosts import reinitialized_copies
from esper.leyline import Edit, Op, Vocabulary
from esper.simic import flops
from esper.simic.env import EnvConfig, GrowthEnv
from esper.simic.episode import Numbers
from esper.simic.flops import FlopMeter
from esper.simic.flops import step_flops as real_step_flops
from esper.simic.loop import GrowthLoop
from esper.simic.tasks import task_for
from esper.simic.vectorized import VectorEnv
from tests.simic.toys import SCRIPT, TinyCNN, state_hash, toy_data

G, A, F, C, W = Op.GERMINATE, Op.ADVANCE, Op.FOSSILIZE, Op.CULL, Op.WAIT
# 80 training images in batches of 32: every epoch trains two full batches and a short one.
BATCHES = (32, 32, 16)


@pytest.fixture(scope="module")
def toy80():
    return toy_data(n_train=80)


def make_env(data, host=TinyCNN, **cfg) -> GrowthEnv:
    cfg = EnvConfig(**{"training_ticks": None, "epochs": 5, "batch_size": 32, "blend_steps": 1, **cfg})
    return GrowthEnv(reinitialized_copies(host()), data, cfg)


def play(env, edits, seed=0) -> list:
    env.reset(seed)
    return [env.step(edit).info for edit in edits]


def counted(run) -> int:
    with FlopCounterMode(display=False) as counter:
        run()
    return counter.get_total_flops()


def host_step(batch: int) -> int:
    """A training step of the bare TinyCNN, counted here without esper."""
    host, x, y = TinyCNN().train(), torch.randn(batch, 3, 16, 16), torch.randint(0, 4, (batch,))
    return counted(lambda: nn.functional.cross_entropy(host(x), y).backward())


def seed_step(seed: nn.Module, shape: tuple, batch: int, through: bool) -> int:
    """A seed's forward and backward on a batch of activations: its weights' gradients only
    (a TRAINING or BLENDING seed sees a detached input), or its input's too (a fossil)."""
    seed = copy.deepcopy(seed)
    h = torch.randn(batch, *shape[1:], requires_grad=through)
    return counted(lambda: seed(h).sum().backward())


def test_a_host_without_seeds_costs_its_own_forward_and_backward_per_batch(toy80):
    env = make_env(toy80, epochs=3)
    infos = play(env, [Edit(W)] * 3)
    epoch = sum(host_step(b) for b in BATCHES)
    assert [i.train_flops for i in infos] == [epoch] * 3
    summary = env.summary()
    assert summary.train_flops == 3 * epoch
    assert summary.host_flops_per_image == host_step(32) / 32
    assert summary.to_dict()["host_train_flops"] == summary.train_flops  # nothing grew
    forward = counted(lambda: TinyCNN()(torch.randn(32, 3, 16, 16)))
    assert 2 * forward < host_step(32) <= 3 * forward  # the input's own gradient is never computed


class HookedCNN(TinyCNN):
    """TinyCNN with a Python branch on a traced value: torch.fx stops there, so the slots
    are hooked onto its modules."""

    def forward(self, x):
        x = self.block2(self.pool(self.block1(x)))
        if x.shape[-1] > 1:
            x = x.mean(dim=(2, 3))
        return self.head(x)


@pytest.mark.parametrize("host", [TinyCNN, HookedCNN])
def test_a_seed_costs_from_training_on_and_a_fossil_is_part_of_the_model(toy80, host):
    env = make_env(toy80, host=host)
    infos = play(env, [Edit(G, "block2", "conv_enhance", "linear", 1), Edit(A, "block2"), Edit(A, "block2"), Edit(F, "block2"), Edit(W)])
    assert env.mm.kind == ("fx" if host is TinyCNN else "hooks")
    slot = env.plane.slots["block2"]
    alone = sum(host_step(b) for b in BATCHES)
    training = alone + sum(seed_step(slot.seed, slot.shape, b, through=False) for b in BATCHES)
    fossil = alone + sum(seed_step(slot.seed, slot.shape, b, through=True) for b in BATCHES)
    assert [i.slots["block2"][0] for i in infos] == ["GERMINATED", "TRAINING", "BLENDING", "FOSSILIZED", "FOSSILIZED"]
    # The stage each chunk trained in: GERMINATED adds nothing, a linear blend only elementwise work.
    assert [i.train_flops for i in infos] == [alone, training, training, fossil, fossil]
    assert alone < training < fossil
    assert env.summary().train_flops == sum(i.train_flops for i in infos)
    assert env.summary().host_flops_per_image == host_step(32) / 32


def test_a_culled_seed_stops_costing(toy80):
    env = make_env(toy80, epochs=4)
    infos = play(env, [Edit(G, "block1", "attention", "sigmoid", 1), Edit(A, "block1"), Edit(C, "block1"), Edit(W)])
    host = sum(host_step(b) for b in BATCHES)
    assert infos[0].train_flops == host and infos[1].train_flops > host
    assert [i.train_flops for i in infos[2:]] == [host, host]


class DropoutCNN(TinyCNN):
    """TinyCNN (BatchNorm) with dropout before its head: a measurement that drew from the
    random stream or ran the real model would change what it trains."""

    def __init__(self):
        super().__init__()
        self.drop = nn.Dropout(0.3)

    def forward(self, x):
        x = self.block2(self.pool(self.block1(x)))
        return self.head(self.drop(x.mean(dim=(2, 3))))


class HookedDropoutCNN(DropoutCNN):
    def forward(self, x):
        x = self.block2(self.pool(self.block1(x)))
        if x.shape[-1] > 1:
            x = x.mean(dim=(2, 3))
        return self.head(self.drop(x))


def test_a_measurement_leaves_the_model_and_the_random_stream_as_they_were(monkeypatch):
    mm = esper.instrument(DropoutCNN(), (torch.randn(2, 3, 16, 16),)).train()
    mm.plane.germinate("block2", "conv_enhance", "linear", 1)
    mm.plane.advance("block2")
    x, y = torch.randn(32, 3, 16, 16), torch.randint(0, 4, (32,))
    for p in mm.parameters():
        p.grad = torch.full_like(p, 0.5)

    def snapshot():
        slots = {i: (s._calls, s._stats is None, s._grad_norm is None) for i, s in mm.plane.slots.items()}
        return state_hash(mm), [p.grad.clone() for p in mm.parameters()], slots, torch.get_rng_state()

    passes = []

    def step_flops(model, *args):
        passes.append(model)
        return real_step_flops(model, *args)

    monkeypatch.setattr(flops, "step_flops", step_flops)
    state, grads, slots, rng = snapshot()
    meter = FlopMeter(mm, task_for(y), nullcontext, torch.device("cpu"))
    assert meter(x, y) == meter(x, y) > 0
    state_after, grads_after, slots_after, rng_after = snapshot()
    assert state_after == state and slots_after == slots and torch.equal(rng_after, rng)
    assert all(torch.equal(a, b) for a, b in zip(grads, grads_after))
    # Two passes, both on a copy: the host alone, then the model; the second call is cached.
    assert len(passes) == 2 and all(m is not mm and m is not mm.host for m in passes)


@pytest.mark.parametrize("host", [DropoutCNN, HookedDropoutCNN])
def test_counting_does_not_change_the_training(monkeypatch, host):
    data = toy_data()

    def run():
        env = make_env(data, host=host, epochs=len(SCRIPT))
        infos = play(env, SCRIPT)
        numbers = [(i.train_loss, i.train_acc, i.val_loss, i.val_acc, i.contributions) for i in infos]
        calls = {slot_id: s._calls for slot_id, s in env.plane.slots.items()}
        return env, numbers, calls, [i.train_flops for i in infos]

    counting, numbers, calls, flops = run()
    assert all(f > 0 for f in flops)
    monkeypatch.setattr(FlopMeter, "__call__", lambda self, x, y: 0)
    plain, plain_numbers, plain_calls, plain_flops = run()
    assert plain_flops == [0] * len(SCRIPT)
    assert numbers == plain_numbers
    assert state_hash(counting.mm) == state_hash(plain.mm)
    assert calls == plain_calls
    assert torch.equal(counting.rng._cpu, plain.rng._cpu)
    optimizers = counting.trainer.optimizer, plain.trainer.optimizer
    for a, b in zip(*[[s for p in o.state.values() for s in p.values()] for o in optimizers]):
        assert torch.equal(a, b)


def test_the_batched_runner_counts_what_the_sequential_runner_counts(toy80):
    plans = [
        [Edit(G, "block1", "conv_enhance", "linear", 1), Edit(A, "block1"), Edit(A, "block1"), Edit(F, "block1")],
        [Edit(G, "block2", "norm", "gated", 1), Edit(A, "block2"), Edit(A, "block2"), Edit(W)],
        [Edit(W), Edit(G, "block1", "depthwise", "sigmoid", 1), Edit(A, "block1"), Edit(A, "block1")],
    ]

    def run(runner):
        envs = [make_env(toy80, epochs=4) for _ in plans]
        venv = VectorEnv(envs, runner=runner)
        venv.reset([10, 11, 12])
        assert venv.batched is (runner == "batched")
        flops = [[r.info.train_flops for r in venv.step([plan[t] for plan in plans])] for t in range(4)]
        return flops, [env.summary() for env in envs]

    sequential, seq_summaries = run("sequential")
    batched, bat_summaries = run("batched")
    assert batched == sequential
    assert len({tuple(step) for step in sequential}) > 1 and any(len(set(step)) > 1 for step in sequential)
    for a, b in zip(seq_summaries, bat_summaries):
        assert (a.train_flops, a.host_flops_per_image) == (b.train_flops, b.host_flops_per_image)


def test_a_loop_that_reports_no_flops_leaves_them_unknown():
    """The Gardener closes its intervals without a trainer's count: None, not zero."""
    mm = esper.instrument(TinyCNN(), (torch.randn(2, 3, 16, 16),))
    loop = GrowthLoop(mm, Vocabulary(["conv_enhance"], ["linear"], 1), decisions=2)
    loop.start(Numbers.before_training(1.0, 0.25))
    infos = []
    for _ in range(2):
        loop.apply(Edit(W))
        infos.append(loop.close(Numbers(1.0, 0.25, 1.0, 0.25)))
    summary = loop.summary()
    assert [i.train_flops for i in infos] == [None, None]
    assert summary.train_flops is None and summary.host_flops_per_image is None
    assert summary.to_dict()["host_train_flops"] is None


def test_host_profile_places_slots_by_the_compute_before_them():
    """Depth is the share of the host's forward FLOPs computed before each slot: increasing
    in host order, within [0, 1], and the total is the host's FLOPs per example."""
    from esper.simic.flops import HostProfile, host_profile

    x = torch.randn(2, 3, 16, 16)
    mm = esper.instrument(TinyCNN(), (x,))
    profile = host_profile(mm)
    assert isinstance(profile, HostProfile) and list(profile.depth) == list(mm.plane.slots)
    depths = list(profile.depth.values())
    assert depths == sorted(depths) and 0 < depths[0] and depths[-1] <= 1
    conv1 = 2 * 3 * 8 * 9 * 16 * 16  # two FLOPs per multiply-add of block1's 3x3 convolution
    conv2 = 2 * 8 * 16 * 9 * 8 * 8
    head = 2 * 16 * 4
    assert profile.flops == conv1 + conv2 + head
    assert profile.depth["block1"] == pytest.approx(conv1 / profile.flops)


def test_blueprint_profile_reads_what_a_blueprint_is_off_its_layers():
    from esper.kasmina.blueprints import blueprint_profile, param_count

    shape = (2, 16, 8, 8)
    conv, depthwise, attention, norm = (blueprint_profile(n, shape) for n in ("conv_enhance", "depthwise", "attention", "norm"))
    assert conv.params == param_count("conv_enhance", shape) and conv.flops > depthwise.flops > 0
    assert conv.spatial_mixing and not conv.depthwise and depthwise.depthwise and depthwise.spatial_mixing
    assert attention.global_mixing and not conv.global_mixing
    assert norm.normalizes and norm.flops == 0 and not norm.spatial_mixing
    state = torch.get_rng_state()
    blueprint_profile("conv_enhance", (2, 24, 8, 8))  # measuring leaves the caller's random stream alone
    assert torch.equal(state, torch.get_rng_state())
