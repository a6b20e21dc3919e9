"""Hosts and helpers shared by the tests."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "examples"))

from host_cnn import HostCNN  # noqa: E402
from tiny_gpt import TinyGPT  # noqa: E402

__all__ = ["HostCNN", "TinyGPT", "ROOT", "default_dtype", "grads", "named", "onnx_outputs", "outputs_equal", "tiny_bert"]


def outputs_equal(a, b) -> bool:
    """Bit-for-bit equality of nested outputs: same structure, same keys, same lengths, same tensors."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.shape == b.shape and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(outputs_equal(a[k], b[k]) for k in a)
    if isinstance(a, (tuple, list)):
        return isinstance(b, (tuple, list)) and len(a) == len(b) and all(outputs_equal(x, y) for x, y in zip(a, b))
    return a == b


def named(name):
    """An assert_close `msg` that puts `name` before torch's own report (which a plain
    string would replace, numbers and all)."""
    return lambda report: f"{name}: {report}"


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype):
    """Build models and draw inputs in `dtype`. Two computations of the same thing in
    different orders differ by float rounding; in float64 that is ~1e-16 relative, so
    they can be compared far more tightly than any real bug would be small."""
    before = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(before)


def grads(model: nn.Module) -> dict[str, torch.Tensor]:
    """A copy of every parameter gradient, by name."""
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def tiny_bert() -> tuple[nn.Module, torch.Tensor]:
    from transformers import BertConfig, BertModel

    cfg = BertConfig(hidden_size=32, num_hidden_layers=4, num_attention_heads=4, intermediate_size=64, vocab_size=100, use_cache=False)
    torch.manual_seed(0)
    return BertModel(cfg), torch.randint(0, 100, (2, 12))


def onnx_outputs(path, x: torch.Tensor) -> torch.Tensor:
    """Run an ONNX file's first output through ONNX's own reference evaluator: no torch in the loop."""
    import onnx
    from onnx.reference import ReferenceEvaluator

    model = onnx.load(str(path))
    return torch.from_numpy(ReferenceEvaluator(model).run(None, {model.graph.input[0].name: x.numpy()})[0])
