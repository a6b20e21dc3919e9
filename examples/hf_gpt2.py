"""A tiny HuggingFace GPT-2: 2 blocks, 64 wide, 4 heads, 64 positions, 256 token ids.

    esper grow --host examples/hf_gpt2.py --data text:README.md --epochs 4 --out runs/hf-gpt2

Needs transformers (in the test extra). It returns a CausalLMOutput; esper reads its .logits.
"""

import torch
from transformers import GPT2Config, GPT2LMHeadModel


def build_model() -> GPT2LMHeadModel:
    # bos/eos inside the vocabulary, and no key/value cache: a model that is still growing trains without one.
    config = GPT2Config(vocab_size=256, n_positions=64, n_embd=64, n_layer=2, n_head=4, bos_token_id=0, eos_token_id=0, use_cache=False)
    return GPT2LMHeadModel(config)


example_input = torch.randint(0, 256, (2, 32))
