"""Growing transformers: the same environment, observations, policies and PPO as for CNNs,
with only causal-safe seeds offered on a causal host."""

from __future__ import annotations

import copy

import pytest
import torch

from esper.data.splits import load_data
from esper.kasmina.blending import blend_names
from esper.kasmina.blueprints import blueprint_names
from esper.kasmina.hosts import reinitialized_copies
from esper.leyline import Edit, Op, Vocabulary, batch_observations
from esper.simic.env import EnvConfig, GrowthEnv
from esper.simic.host_training import probe_accuracy
from esper.simic.training import Trainer
from esper.simic.vectorized import VectorEnv, decide_with, run_episodes
from esper.tamiyo import HeuristicConfig, HeuristicPolicy, RandomPolicy, TamiyoPolicy
from tests.helpers import TinyGPT
from tests.simic.toys import TinyCNN, tiny_config, toy_data

UNSAFE_BLUEPRINTS = {"attention", "conv_enhance", "depthwise"}  # at a sequence slot, only "attention" applies


@pytest.fixture(scope="module")
def recall():
    return load_data("seq-synthetic", context=16, limit=96)


def gpt_env(data, **cfg) -> GrowthEnv:
    host = TinyGPT(vocab=64, dim=16, depth=2, heads=2, context=16)
    return GrowthEnv(reinitialized_copies(host), data, EnvConfig(**{"epochs": 4, "batch_size": 32, "blend_steps": 1, **cfg}))


def test_a_causal_host_is_offered_causal_safe_seeds_only(recall):
    env = gpt_env(recall)
    obs = env.reset(0)
    assert env.task.name == "next_token" and env.plane.causal
    offered = {env.vocab.blueprints[j] for j in obs.blueprint_mask[0].nonzero().flatten().tolist()}
    assert offered == {"causal_attention", "lora", "mlp", "norm"}
    assert [b for b, ok in zip(env.vocab.blends, obs.blend_mask.tolist()) if ok] == blend_names(causal=True)
    # a random policy explores every legal choice: none is refused by the plane, none could see the future
    rollout = run_episodes(VectorEnv([env]), [0], decide_with(RandomPolicy(Vocabulary(env.vocab.blueprints, env.vocab.blends, 1), seed=0)))
    grown = [e for e in env.plane.edits if e.op is Op.GERMINATE]
    assert not {e.blueprint for e in grown} & UNSAFE_BLUEPRINTS and all(e.blend != "gated" for e in grown)
    summary = rollout.summaries[0]
    assert 0.0 <= summary.val_acc <= 1.0 and summary.val_loss > 0


def test_the_heuristic_grows_a_transformer_on_next_token_accuracy(recall):
    env = gpt_env(recall, epochs=8)
    policy = HeuristicPolicy(
        Vocabulary(env.vocab.blueprints, env.vocab.blends, 1), HeuristicConfig(blueprint_preference=["attention", "mlp"])
    )
    rollout = run_episodes(VectorEnv([env]), [0], decide_with(policy))
    germinated = [e for e in env.plane.edits if e.op is Op.GERMINATE]
    assert germinated and all(e.blueprint == "mlp" for e in germinated)  # its first choice is masked here
    loss, acc = env.evaluate(recall.val)
    assert acc == pytest.approx(rollout.summaries[0].val_acc)
    # accuracy counts the scored answers only: four per sequence
    assert acc == pytest.approx(probe_accuracy(env.mm.eval(), recall.val.x, recall.val.y))
    assert round(acc * 4 * len(recall.val)) == pytest.approx(acc * 4 * len(recall.val))


def test_one_policy_network_acts_on_cnn_and_transformer_hosts_in_one_batch(recall):
    cnn = GrowthEnv(reinitialized_copies(TinyCNN()), toy_data(), EnvConfig(epochs=2, batch_size=32))
    gpt = gpt_env(recall, max_slots=3)
    observations = [cnn.reset(0), gpt.reset(0)]
    assert observations[0].num_slots != observations[1].num_slots
    policy = TamiyoPolicy(Vocabulary(blueprint_names(), blend_names(), 2), hidden=16)
    torch.manual_seed(0)
    sample = policy.act(batch_observations(observations * 64))  # 64 samples of each
    for row in range(1, 128, 2):
        op, _, blueprint, blend = sample.row(row)
        if op == Op.GERMINATE:
            assert policy.vocab.blueprints[blueprint] not in UNSAFE_BLUEPRINTS and policy.vocab.blends[blend] != "gated"
    assert {sample.row(r).op for r in range(0, 128, 2)} >= {Op.WAIT, Op.GERMINATE}


def test_ppo_trains_on_a_transformer_host(tmp_path, recall):
    cfg = tiny_config(**{"data": "seq-synthetic", "warm_start": 2, "imitation.max_epochs": 2}).resolved()
    host = TinyGPT(vocab=64, dim=16, depth=2, heads=2, context=16)
    Trainer(cfg, tmp_path / "run", copy.deepcopy(host), recall, progress=False, log=lambda s: None).run()
    assert (tmp_path / "run" / "tamiyo.pt").is_file()


def test_a_huggingface_host_returning_logits_in_an_object_grows(recall):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    host = GPT2LMHeadModel(
        GPT2Config(vocab_size=64, n_positions=16, n_embd=16, n_layer=2, n_head=2, use_cache=False, bos_token_id=0, eos_token_id=0)
    )
    env = GrowthEnv(lambda: copy.deepcopy(host), recall, EnvConfig(epochs=2, batch_size=32, blend_steps=1))
    env.reset(0)
    assert env.plane.causal and type(env.mm(recall.val.x[:2])).__name__ == "CausalLMOutputWithCrossAttentions"
    slot = list(env.plane.slots)[-1]
    env.step(Edit(Op.GERMINATE, slot, "lora", "linear", 1))
    result = env.step(Edit(Op.ADVANCE, slot))
    assert 0.0 <= result.info.val_acc <= 1.0 and result.info.train_loss > 0
