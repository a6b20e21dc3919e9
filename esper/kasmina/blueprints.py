"""Blueprints: what a seed grows into. A registry keyed by name, one decorated class each.

Every blueprint is residual, `out = x + f(x)`, with the last layer of `f` zero-initialised,
so germination leaves the model's output unchanged. A blueprint sizes itself from the
slot's activation shape: (B, C, H, W) for convolutional slots, (B, T, D) for sequences.

    @register_blueprint("my_block", ranks=(4,), description="...")
    class MyBlock(nn.Module):
        def __init__(self, shape): ...

A blueprint registered with `causal=True` is causal-safe: its output at position t depends
on its input at positions <= t only, for every t. On a causal host (`plane.causal`) only
those may grow, since any other would let a token see the future. Unless declared, a
blueprint is presumed unsafe.

Blueprints can also be declared in YAML (`specs/blueprints.yaml` shape) with a `class:
package.module:ClassName` entry (and `causal: true` if it is causal-safe);
`load_blueprint_catalogue(path)` registers them.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from torch import nn

from esper.kasmina.blending import blend_names


@dataclass(frozen=True)
class BlueprintEntry:
    name: str
    rank: int
    cls: type
    description: str
    causal: bool = False


_REGISTRY: dict[str, dict[int, BlueprintEntry]] = {}


def register_blueprint(name: str, ranks: tuple[int, ...], description: str = "", causal: bool = False):
    """Class decorator: make `cls(shape)` available as blueprint `name` for these ranks;
    `causal` declares it causal-safe (see the module docstring)."""

    def wrap(cls):
        for rank in ranks:
            entry = BlueprintEntry(name, rank, cls, description or (cls.__doc__ or "").strip(), causal)
            _REGISTRY.setdefault(name, {})[rank] = entry
        return cls

    return wrap


def blueprint_names() -> list[str]:
    return sorted(_REGISTRY)


def blueprints_for(rank: int, causal: bool = False) -> list[str]:
    """Blueprints that apply to activations of this rank; with `causal`, only the causal-safe ones."""
    return sorted(name for name, by_rank in _REGISTRY.items() if rank in by_rank and (by_rank[rank].causal or not causal))


def blueprint_ranks(causal: bool = False) -> dict[str, set[int]]:
    """Blueprint name -> the activation ranks it may grow at (with `causal`: where it is causal-safe)."""
    return {name: {r for r, e in by_rank.items() if e.causal or not causal} for name, by_rank in _REGISTRY.items()}


def build_blueprint(name: str, shape: tuple[int, ...]) -> nn.Module:
    """Instantiate blueprint `name` for an activation of `shape` (batch first)."""
    if name not in _REGISTRY:
        raise KeyError(f"unknown blueprint '{name}'; known: {', '.join(blueprint_names())}")
    entry = _REGISTRY[name].get(len(shape))
    if entry is None:
        ranks = sorted(_REGISTRY[name])
        raise ValueError(f"blueprint '{name}' applies to rank {ranks} activations, not rank {len(shape)} {tuple(shape)}")
    module = entry.cls(tuple(shape))
    module.blueprint_id = name
    return module


def param_count(name: str, shape: tuple[int, ...]) -> int:
    """The real number of parameters blueprint `name` adds at a slot of `shape`."""
    with torch.device("meta"):
        module = build_blueprint(name, shape)
    return sum(p.numel() for p in module.parameters())


def load_blueprint_catalogue(path: str | Path) -> list[str]:
    """Register every entry of a YAML catalogue that names a class; return their names."""
    data = yaml.safe_load(Path(path).read_text()) or {}
    names = []
    for entry in data.get("blueprints", []):
        if "class" not in entry:
            continue  # a built-in: its class is registered by decorator
        module_name, _, cls_name = entry["class"].partition(":")
        cls = getattr(importlib.import_module(module_name), cls_name)
        register_blueprint(entry["name"], tuple(entry["ranks"]), entry.get("description", ""), bool(entry.get("causal", False)))(cls)
        names.append(entry["name"])
    return names


def _groups(channels: int) -> int:
    for g in (8, 4, 2):
        if channels % g == 0:
            return g
    return 1


def _zero(layer: nn.Module) -> nn.Module:
    nn.init.zeros_(layer.weight)
    if getattr(layer, "bias", None) is not None:
        nn.init.zeros_(layer.bias)
    return layer


@register_blueprint("conv_enhance", ranks=(4,))
class ConvEnhance(nn.Module):
    """3x3 conv, norm, activation, zero-initialised 1x1 projection, residual."""

    def __init__(self, shape):
        super().__init__()
        c = shape[1]
        self.conv = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.norm = nn.BatchNorm2d(c)
        self.act = nn.ReLU()
        self.proj = _zero(nn.Conv2d(c, c, 1))

    def forward(self, x):
        return x + self.proj(self.act(self.norm(self.conv(x))))


@register_blueprint("attention", ranks=(4,))
class ChannelAttention(nn.Module):
    """Squeeze-excite channel attention: x * (1 + tanh(gate)), gate starting at zero."""

    def __init__(self, shape):
        super().__init__()
        c = shape[1]
        hidden = max(4, c // 4)
        self.fc1 = nn.Conv2d(c, hidden, 1)
        self.act = nn.ReLU()
        self.fc2 = _zero(nn.Conv2d(hidden, c, 1))

    def forward(self, x):
        gate = self.fc2(self.act(self.fc1(x.mean(dim=(2, 3), keepdim=True))))
        return x + x * torch.tanh(gate)


@register_blueprint("norm", ranks=(4,))
class ConvNorm(nn.Module):
    """GroupNorm added through a per-channel scale that starts at zero."""

    def __init__(self, shape):
        super().__init__()
        c = shape[1]
        self.norm = nn.GroupNorm(_groups(c), c)
        self.scale = nn.Parameter(torch.zeros(1, c, 1, 1))

    def forward(self, x):
        return x + self.scale * self.norm(x)


@register_blueprint("depthwise", ranks=(4,))
class DepthwiseSeparable(nn.Module):
    """Depthwise 3x3, norm, activation, zero-initialised pointwise 1x1, residual."""

    def __init__(self, shape):
        super().__init__()
        c = shape[1]
        self.depthwise = nn.Conv2d(c, c, 3, padding=1, groups=c, bias=False)
        self.norm = nn.BatchNorm2d(c)
        self.act = nn.ReLU()
        self.pointwise = _zero(nn.Conv2d(c, c, 1))

    def forward(self, x):
        return x + self.pointwise(self.act(self.norm(self.depthwise(x))))


@register_blueprint("mlp", ranks=(3,), causal=True)
class SequenceMLP(nn.Module):
    """Pre-norm MLP (4x expansion, GELU) with a zero-initialised output layer."""

    def __init__(self, shape):
        super().__init__()
        d = shape[-1]
        self.norm = nn.LayerNorm(d)
        self.fc1 = nn.Linear(d, 4 * d)
        self.act = nn.GELU()
        self.fc2 = _zero(nn.Linear(4 * d, d))

    def forward(self, x):
        return x + self.fc2(self.act(self.fc1(self.norm(x))))


@register_blueprint("attention", ranks=(3,))
class SequenceAttention(nn.Module):
    """Pre-norm multi-head self-attention with a zero-initialised output projection.

    Bidirectional: every token sees every other. On a causal (GPT-style) host use
    `causal_attention`, or a seed would let tokens see the future.
    """

    causal = False

    def __init__(self, shape):
        super().__init__()
        d = shape[-1]
        heads = next(h for h in (8, 4, 2, 1) if d % h == 0)
        self.norm = nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, heads, batch_first=True)
        _zero(self.attn.out_proj)

    def forward(self, x):
        y = self.norm(x)
        mask = None
        if self.causal:
            t = x.shape[1]
            mask = torch.ones(t, t, dtype=torch.bool, device=x.device).triu(1)
        return x + self.attn(y, y, y, attn_mask=mask, need_weights=False)[0]


@register_blueprint("causal_attention", ranks=(3,), causal=True)
class CausalSequenceAttention(SequenceAttention):
    """Pre-norm causal self-attention (each token sees itself and earlier ones), output at zero."""

    causal = True


@register_blueprint("lora", ranks=(3,), causal=True)
class LowRank(nn.Module):
    """Low-rank residual x + up(down(x)), rank 8 (or less for narrow streams), up at zero."""

    def __init__(self, shape, rank: int = 8):
        super().__init__()
        d = shape[-1]
        r = min(rank, d)
        self.down = nn.Linear(d, r, bias=False)
        self.up = _zero(nn.Linear(r, d, bias=False))

    def forward(self, x):
        return x + self.up(self.down(x))


@register_blueprint("norm", ranks=(3,), causal=True)
class SequenceNorm(nn.Module):
    """LayerNorm added through a per-feature scale that starts at zero."""

    def __init__(self, shape):
        super().__init__()
        d = shape[-1]
        self.norm = nn.LayerNorm(d)
        self.scale = nn.Parameter(torch.zeros(d))

    def forward(self, x):
        return x + self.scale * self.norm(x)


def registered_names(blueprints: list[str] | None = None, blends: list[str] | None = None) -> tuple[list[str], list[str]]:
    """The blueprint and blend names of a vocabulary, checked against the registries
    (default: every registered one)."""
    blueprints = list(blueprints or blueprint_names())
    blends = list(blends or blend_names())
    known_bp, known_bl = set(blueprint_names()), set(blend_names())
    unknown = [b for b in blueprints if b not in known_bp] + [b for b in blends if b not in known_bl]
    if unknown:
        raise ValueError(f"unknown blueprints/blends {unknown}; registered: {sorted(known_bp)} / {sorted(known_bl)}")
    return blueprints, blends
