"""A tiny HuggingFace Llama: 2 blocks, 64 wide, 4 heads (2 key/value heads), 256 token ids.

    esper grow --host examples/hf_llama.py --data text:README.md --epochs 4 --out runs/hf-llama

Needs transformers (in the test extra). It returns a CausalLMOutputWithPast; esper reads its .logits.
"""

import torch
from transformers import LlamaConfig, LlamaForCausalLM


def build_model() -> LlamaForCausalLM:
    # bos/eos inside the vocabulary, and no key/value cache: a model that is still growing trains without one.
    config = LlamaConfig(
        vocab_size=256,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        bos_token_id=0,
        eos_token_id=0,
        use_cache=False,
    )
    return LlamaForCausalLM(config)


example_input = torch.randint(0, 256, (2, 32))
