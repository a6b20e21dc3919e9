"""The causality probe: can a host's output at position t see its input after t?

A host is causal along its sequence axis when, for every t, its outputs at positions
<= t stay the same bit for bit whatever its inputs at positions > t are. The probe
tests that on random inputs shaped like the example (the host in eval mode):

    for each of `inputs` random x (token ids below the smallest embedding table's size,
    or standard normal features):
        y = host(x)
        for each cut t of `cuts` (the first, the middle, the last but one, random ones):
            x' = x with every position after t changed (each token id moved to another,
                 each feature vector redrawn)
            causal only if host(x')[:, :t+1] == y[:, :t+1] for every output tensor
            whose leading sizes are the input's (B, T)

The sequence axis is dim 1 of the first input: (B, T) integer token ids or (B, T, D)
features. An image (B, C, H, W) has none, and a host whose output carries no (B, T, ...)
tensor has no position to be causal at: both count as not causal, which leaves every
blueprint available. A wrong "causal" would only narrow the choice of blueprints; a
wrong "not causal" would let seeds see the future, so a single changed bit decides.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from esper.graph.modes import eval_mode


def output_tensors(out) -> list[torch.Tensor]:
    """Every tensor in a (nested) output: a tensor, a dict (a HuggingFace output), a tuple or list."""
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        return [t for v in out.values() for t in output_tensors(v)]
    if isinstance(out, (tuple, list)):
        return [t for v in out for t in output_tensors(v)]
    return []


def has_sequence_axis(x) -> bool:
    """Token ids (B, T) or features (B, T, D): inputs with a sequence axis at dim 1."""
    if not isinstance(x, torch.Tensor):
        return False
    tokens = x.dim() == 2 and not x.is_floating_point() and not x.is_complex() and x.dtype is not torch.bool
    return tokens or (x.dim() == 3 and x.is_floating_point())


def probe_causality(model: nn.Module, args: tuple, inputs: int = 3, cuts: int = 4, seed: int = 0) -> bool:
    """Whether `model` is causal along the sequence axis of `args[0]` (see the module
    docstring). The probe draws from its own generator, so the global RNG is untouched."""
    x = args[0]
    if not has_sequence_axis(x) or x.shape[1] < 2:
        return False
    vocab = None if x.is_floating_point() else _token_range(model, x)
    if vocab is not None and vocab < 2:
        return False  # one token id: nothing to change the future to
    g = torch.Generator().manual_seed(seed)
    try:
        with eval_mode(model), torch.no_grad():
            return all(_causal_on(model, _draw(x, vocab, g), args[1:], vocab, cuts, g) for _ in range(inputs))
    except Exception as e:  # the host ran on the example; random inputs of its shape should not fail
        warnings.warn(
            f"{type(model).__name__}: the causality probe failed ({type(e).__name__}: {e}); treating the "
            "host as not causal (put `causal: true` in the slot spec to say otherwise)",
            stacklevel=3,
        )
        return False


def _causal_on(model, x, rest, vocab, cuts, g) -> bool:
    b, t = x.shape[:2]
    before = _aligned(model(x, *rest), b, t)
    if not before:
        return False
    for cut in _cuts(t, cuts, g):
        moved = x.clone()
        moved[:, cut + 1 :] = _changed(x[:, cut + 1 :], vocab, g)
        after = _aligned(model(moved, *rest), b, t)
        if len(after) != len(before) or not all(torch.equal(p[:, : cut + 1], q[:, : cut + 1]) for p, q in zip(before, after)):
            return False
    return True


def _aligned(out, b: int, t: int) -> list[torch.Tensor]:
    return [o for o in output_tensors(out) if o.dim() >= 2 and tuple(o.shape[:2]) == (b, t)]


def _cuts(t: int, n: int, g: torch.Generator) -> list[int]:
    """Up to n distinct cut positions in [0, t - 2]: the ends and the middle first, then random."""
    chosen = list(dict.fromkeys([0, (t - 1) // 2, t - 2]))
    extra = torch.randperm(t - 1, generator=g).tolist()
    chosen += [c for c in extra if c not in chosen]
    return chosen[:n]


def _token_range(model: nn.Module, x: torch.Tensor) -> int:
    """Token ids below this are valid: the smallest embedding table, else what the example holds."""
    sizes = [m.num_embeddings for m in model.modules() if isinstance(m, nn.Embedding)]
    return min(sizes) if sizes else int(x.max()) + 1


def _draw(x: torch.Tensor, vocab: int | None, g: torch.Generator) -> torch.Tensor:
    if vocab is None:
        return torch.randn(x.shape, generator=g).to(device=x.device, dtype=x.dtype)
    return torch.randint(0, vocab, x.shape, generator=g).to(device=x.device, dtype=x.dtype)


def _changed(part: torch.Tensor, vocab: int | None, g: torch.Generator) -> torch.Tensor:
    if vocab is None:
        return _draw(part, None, g)
    shift = torch.randint(1, vocab, part.shape, generator=g).to(device=part.device, dtype=part.dtype)
    return (part + shift) % vocab  # every id moves to a different valid id
