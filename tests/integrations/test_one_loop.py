"""`esper grow`'s path and a hand-written loop with a Gardener run the same growth loop:
the same policy on the same seed sees the same observations, makes the same edits at the
same ticks, and ends with the same summary."""

from __future__ import annotations

import math

import torch

import esper
from esper.graph import eval_mode
from esper.leyline import Vocabulary
from esper.simic.env import EnvConfig, GrowthEnv
from esper.simic.host_training import lr_factor
from esper.simic.vectorized import VectorEnv, decide_with, run_episodes
from esper.tamiyo import HeuristicConfig, HeuristicPolicy
from tests.simic.toys import TinyCNN, toy_data

SEED = 5
CFG = EnvConfig(epochs=8, batch_size=32, blend_steps=1, lr=3e-3)
# Lenient enough that a seed goes all the way to a fossil on the toy task.
HEURISTIC = HeuristicConfig(tolerance=1.0, decline=1.0)
BLUEPRINTS, BLENDS = ["depthwise", "conv_enhance"], ["linear", "sigmoid"]


class Recording:
    """The heuristic, keeping every observation it is shown."""

    def __init__(self):
        self.vocab = Vocabulary(BLUEPRINTS, BLENDS, CFG.blend_steps)
        self.policy = HeuristicPolicy(self.vocab, HEURISTIC)
        self.seen = []

    def decide(self, observations):
        self.seen += observations
        return self.policy.decide(observations)


def through_esper_grow(data):
    env = GrowthEnv(TinyCNN, data, CFG, blueprints=BLUEPRINTS, blends=BLENDS)
    policy = Recording()
    infos = []
    rollout = run_episodes(VectorEnv([env]), [SEED], decide_with(policy), lambda d: infos.append(d.results[0].info))
    return policy.seen, env.plane.edits, rollout.summaries[0], infos


def evaluate(mm, split):
    """Mean loss and accuracy over the split, in eval mode."""
    with eval_mode(mm), torch.no_grad():
        out = mm(split.x)
        loss = torch.nn.functional.cross_entropy(out, split.y).double() * len(split.y)
        return (loss / len(split.y)).item(), (out.argmax(-1) == split.y).sum().item() / len(split.y)


def through_a_hand_written_loop(data):
    torch.manual_seed(SEED)
    mm = esper.instrument(TinyCNN(), (data.train.x[:2],))
    opt = torch.optim.AdamW(mm.parameters(), lr=CFG.lr, weight_decay=CFG.weight_decay)
    total = math.ceil(len(data.train) / CFG.batch_size) * CFG.epochs
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: lr_factor(CFG, step / total))
    val_loss, val_acc = evaluate(mm, data.val)
    policy = Recording()
    n = CFG.contribution_samples
    gardener = esper.Gardener(
        mm,
        policy,
        optimizer=opt,
        scheduler=sched,
        epochs=CFG.epochs,
        blend_steps=CFG.blend_steps,
        probe=(data.val.x[:n], data.val.y[:n]),
        initial_metrics={"val_loss": val_loss, "val_acc": val_acc},
    )
    order = torch.Generator().manual_seed(SEED)
    for _ in range(CFG.epochs):
        mm.train()
        loss_sum, correct, count = torch.zeros(()), 0, 0
        for x, y in data.train.batches(CFG.batch_size, shuffle=True, generator=order):
            opt.zero_grad(set_to_none=True)
            out = mm(x)
            loss = torch.nn.functional.cross_entropy(out, y)
            loss.backward()
            gardener.after_backward()
            opt.step()
            sched.step()
            loss_sum, correct, count = loss_sum + loss.detach() * len(y), correct + (out.argmax(-1) == y).sum(), count + len(y)
        gardener.step(
            train_loss=loss_sum.item() / count,
            train_acc=correct.item() / count,
            **dict(zip(("val_loss", "val_acc"), evaluate(mm, data.val))),
        )
    assert gardener.done
    return policy.seen, gardener.edits, gardener.summary(), gardener.records


def same_observation(a, b) -> bool:
    return a.slot_ids == b.slot_ids and all(
        torch.equal(getattr(a, k), getattr(b, k)) for k in ("global_features", "slot_features", "op_mask", "blueprint_mask", "blend_mask")
    )


def test_esper_grow_and_a_gardener_loop_see_decide_and_summarize_alike():
    data = toy_data()
    seen_env, edits_env, summary_env, infos_env = through_esper_grow(data)
    seen_loop, edits_loop, summary_loop, infos_loop = through_a_hand_written_loop(data)

    assert len(seen_env) == len(seen_loop) == CFG.decisions
    for t, (a, b) in enumerate(zip(seen_env, seen_loop)):
        assert same_observation(a, b), f"decision {t}: the observations differ"
    assert [e.to_dict() for e in edits_env] == [e.to_dict() for e in edits_loop]
    # one decision at each tick 0..T-1, and the plane's own advances logged beside them
    assert sorted({e.tick for e in edits_env}) == list(range(CFG.decisions))
    assert [e.tick for e in edits_env] == sorted(e.tick for e in edits_env)
    assert summary_env.fossilized >= 1  # the run went through a whole lifecycle
    # wall time, and the examples and compute of the training the Gardener is not told of
    timing = ("images", "train_seconds", "train_flops", "host_flops_per_image", "host_train_flops")
    env, loop = summary_env.to_dict(), summary_loop.to_dict()
    assert {k: v for k, v in env.items() if k not in timing} == {k: v for k, v in loop.items() if k not in timing}
    strip = lambda info: {k: v for k, v in info.to_dict().items() if k not in timing}  # noqa: E731
    assert [strip(i) for i in infos_env] == [strip(i) for i in infos_loop]
