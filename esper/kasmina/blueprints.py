"""Blueprints: what a seed grows into. A registry keyed by name, one decorated class each.

Every blueprint is residual, `out = x + f(x)`, with the last layer of `f` zero-initialised,
so germination leaves the model's output unchanged. A blueprint sizes itself from the
slot's activation shape: (B, C, H, W) for convolutional slots, (B, T, D) for sequences.

    @register_blueprint("my_block", ranks=(4,), description="...")
    class MyBlock(nn.Module):
        def __init__(self, shape): ...

        @staticmethod
        def misfit(shape): ...  # optional: why it cannot act on `shape`, or None

A blueprint grows only where it can act. It applies to the activation ranks it is
registered for, and its class may declare `misfit(shape) -> str | None`: why it cannot act
on activations of `shape` (None: it can), e.g. a 3x3 kernel on a 1x1 map, where only the
centre tap ever sees the map. `why_unfit(name, shape)` is the one rule for both; every
policy's masks and `plane.germinate` follow it.

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
from functools import lru_cache
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


def _by_rank(name: str) -> dict[int, BlueprintEntry]:
    if name not in _REGISTRY:
        raise KeyError(f"unknown blueprint '{name}'; known: {', '.join(blueprint_names())}")
    return _REGISTRY[name]


def blueprint_ranks(name: str) -> list[int]:
    """The activation ranks blueprint `name` is registered for."""
    return sorted(_by_rank(name))


def why_unfit(name: str, shape: tuple[int, ...], causal: bool = False) -> str | None:
    """Why blueprint `name` cannot grow at a slot whose activations have `shape` (batch
    first), or None when it can: not registered for that rank, or its class's `misfit`
    says it cannot act there; with `causal`, also when it is not causal-safe."""
    entry = _by_rank(name).get(len(shape))
    if entry is None:
        return f"it applies to rank {blueprint_ranks(name)} activations, not rank {len(shape)}"
    if causal and not entry.causal:
        return "it lets a position see later ones"
    misfit = getattr(entry.cls, "misfit", None)
    return misfit(tuple(shape)) if misfit is not None else None


def blueprints_for(shape: tuple[int, ...], causal: bool = False) -> list[str]:
    """The blueprints that can grow at a slot whose activations have `shape`; with `causal`,
    only the causal-safe ones."""
    return [name for name in blueprint_names() if why_unfit(name, shape, causal) is None]


def build_blueprint(name: str, shape: tuple[int, ...]) -> nn.Module:
    """Instantiate blueprint `name` for an activation of `shape` (batch first), whatever
    `why_unfit` says: the plane refuses unfit germinations before building."""
    entry = _by_rank(name).get(len(shape))
    if entry is None:
        raise ValueError(f"blueprint '{name}' cannot be built for {tuple(shape)}: {why_unfit(name, shape)}")
    module = entry.cls(tuple(shape))
    module.blueprint_id = name
    return module


def param_count(name: str, shape: tuple[int, ...]) -> int:
    """The real number of parameters blueprint `name` adds at a slot of `shape`."""
    with torch.device("meta"):
        module = build_blueprint(name, shape)
    return sum(p.numel() for p in module.parameters())


@dataclass(frozen=True)
class BlueprintProfile:
    """What blueprint `name` adds at a slot: its parameters, its forward FLOPs per example
    (matrix multiplications and convolutions, two per multiply-add, as esper.simic.flops
    counts) and what kind of module it is, read off the layers it builds, so that a
    blueprint added later is described like the built-in ones."""

    params: int
    flops: int
    spatial_mixing: bool  # a convolution wider than 1x1
    channel_mixing: bool  # a dense 1x1 convolution or linear layer
    global_mixing: bool  # attention
    normalizes: bool
    depthwise: bool  # a grouped convolution


_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.LayerNorm, nn.GroupNorm, nn.InstanceNorm2d)


@lru_cache(maxsize=4096)
def blueprint_profile(name: str, shape: tuple[int, ...]) -> BlueprintProfile:
    """The profile of blueprint `name` at a slot of `shape` (batch first), measured on two examples."""
    from torch.utils.flop_counter import FlopCounterMode

    two = (2, *tuple(shape)[1:])
    with torch.random.fork_rng(devices=[]):  # building draws initial weights: leave the caller's stream alone
        module = build_blueprint(name, two)
        layers = list(module.modules())
        convs = [m for m in layers if isinstance(m, (nn.Conv1d, nn.Conv2d))]
        # Training mode: attention's inference fast path is a fused op the counter does not see.
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            module.train()(torch.randn(two))
    return BlueprintProfile(
        params=sum(p.numel() for p in module.parameters()),
        flops=counter.get_total_flops() // 2,
        spatial_mixing=any(max(c.kernel_size) > 1 for c in convs),
        channel_mixing=any(isinstance(m, nn.Linear) for m in layers) or any(max(c.kernel_size) == 1 and c.groups == 1 for c in convs),
        global_mixing=any(isinstance(m, nn.MultiheadAttention) or "attention" in type(m).__name__.lower() for m in layers),
        normalizes=any(isinstance(m, _NORMS) for m in layers),
        depthwise=any(c.groups > 1 for c in convs),
    )


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


def _centre_tap_only(shape: tuple[int, ...], k: int) -> str | None:
    # On a 1xW or Hx1 map a k x k kernel still mixes neighbours along the other axis, and on
    # maps smaller than k its outer taps read padding but the inner ones still mix pixels.
    if shape[2] == shape[3] == 1:
        return f"a {k}x{k} kernel sees a 1x1 map through its centre tap only, a 1x1 convolution in disguise"
    return None


def _single_value_norm(values: int, norm: str) -> str | None:
    # A normalisation over one value always reads 0, so the seed could add only a constant.
    if values == 1:
        return f"its {norm} normalises one value at a time, which always reads 0, so it could only add a constant"
    return None


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

    @staticmethod
    def misfit(shape):
        return _centre_tap_only(shape, 3)


@register_blueprint("attention", ranks=(4,))
class ChannelAttention(nn.Module):
    """Squeeze-excite channel attention: x * (1 + tanh(gate)), gate starting at zero."""

    # No misfit: on a 1x1 map the squeeze reads the pixel itself, and the gate still mixes channels.
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

    @staticmethod
    def misfit(shape):
        c, h, w = shape[1:]
        return _single_value_norm(c // _groups(c) * h * w, "GroupNorm")


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

    @staticmethod
    def misfit(shape):
        return _centre_tap_only(shape, 3)


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

    @staticmethod
    def misfit(shape):
        return _single_value_norm(shape[-1], "LayerNorm")


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

    @staticmethod
    def misfit(shape):
        if shape[1] == 1:
            return "self-attention over a single position attends only to itself, a per-token linear map"
        return _single_value_norm(shape[-1], "LayerNorm")


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

    @staticmethod
    def misfit(shape):
        return _single_value_norm(shape[-1], "LayerNorm")


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
