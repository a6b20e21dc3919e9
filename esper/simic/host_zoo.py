"""The host zoo: small image classifiers of several families, widths and depths, that Tamiyo is pretrained on and evaluated on.

A host's name is FAMILY-wWIDTH-bDEPTH: WIDTH channels in its first stage, DEPTH stages or
blocks. The name is the whole recipe, so `HOSTS` is built from the two name lists below.
Every host reads 3-channel images of 16x16 or larger, averages over the image before its
classifier, and returns [B, num_classes] logits. Each is an nn.Module composition without
data-dependent control flow, so `esper.instrument` finds its block boundaries.

Families (channels double per stage up to the third, then stay, as in HostCNN; a
ConvMixer keeps one width):

  plain      HostCNN itself: conv-BN-ReLU blocks, each followed by a 2x2 max-pool
  residual   a conv stem, then ResNet basic blocks; the first three halve the image
  inverted   a stride-2 conv stem, then MobileNetV2 stages of two inverted-residual
             blocks: the first changes channels (and halves the image in the first two
             stages), the second keeps the shape and so adds its input back
  vgg        stages of two conv-BN-ReLU layers and a 2x2 max-pool
  convmixer  a stride-2 patch embedding, then blocks of residual depthwise conv and a
             pointwise conv, at one resolution throughout

Plain and vgg hosts pool once per stage, so they stop at four stages (16 -> 1 pixels); the
evidence benchmark's deep transfer host, HostCNN(width=16, blocks=5), is not in the zoo for that reason.
"""

from __future__ import annotations

import functools
from collections import OrderedDict
from typing import Callable

import torch
from torch import nn

__all__ = ["HOSTS", "TRAINING_HOSTS", "UNSEEN_HOSTS", "build_host"]

# Pretraining sees four families at several widths and depths. "plain-w16-b3" is the
# evidence benchmark's in-distribution host, HostCNN(width=16, blocks=3).
TRAINING_HOSTS: tuple[str, ...] = (
    "plain-w16-b3",
    "plain-w8-b4",
    "plain-w32-b2",
    "residual-w8-b3",
    "residual-w16-b2",
    "residual-w12-b4",
    "inverted-w16-b2",
    "inverted-w8-b3",
    "inverted-w12-b4",
    "vgg-w8-b3",
    "vgg-w16-b2",
    "vgg-w12-b2",
)
# Held out: a family pretraining never sees, and width/depth pairs of two it does.
UNSEEN_HOSTS: tuple[str, ...] = ("convmixer-w32-b5", "residual-w10-b5", "vgg-w12-b4")


def _channels(width: int, i: int) -> int:
    return width * 2 ** min(i, 2)


def _conv_bn(cin: int, cout: int, kernel: int = 3, stride: int = 1, groups: int = 1, act=nn.ReLU) -> nn.Sequential:
    layers = [nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    return nn.Sequential(*layers, act()) if act is not None else nn.Sequential(*layers)


class _ConvBlock(nn.Module):
    # Attribute names as in examples/host_cnn.py, so plain hosts share HostCNN's state_dict keys.
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.act = nn.ReLU()

    def forward(self, x):
        return self.act(self.bn(self.conv(x)))


class PlainCNN(nn.Module):
    """HostCNN (examples/host_cnn.py), copied rather than imported: esper cannot import
    examples/, and the zoo's plain family must stay the benchmark's host, module for module."""

    def __init__(self, num_classes: int, width: int, blocks: int):
        super().__init__()
        channels = [3] + [_channels(width, i) for i in range(blocks)]
        for i in range(blocks):
            self.add_module(f"block{i + 1}", _ConvBlock(channels[i], channels[i + 1]))
        self.blocks = blocks
        self.pool = nn.MaxPool2d(2, 2)
        self.classifier = nn.Linear(channels[-1], num_classes)

    def forward(self, x):
        for i in range(self.blocks):
            x = self.pool(getattr(self, f"block{i + 1}")(x))
        return self.classifier(torch.flatten(x.mean(dim=(2, 3)), 1))


class _Stack(nn.Module):
    """Named blocks in turn, then global average pooling and a linear classifier. Each
    block is a direct child, so slots take the blocks' names (stem, block1, ...)."""

    def __init__(self, blocks: OrderedDict[str, nn.Module], channels: int, num_classes: int):
        super().__init__()
        for name, block in blocks.items():
            self.add_module(name, block)
        self.order = list(blocks)
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x):
        for name in self.order:
            x = getattr(self, name)(x)
        return self.classifier(torch.flatten(x.mean(dim=(2, 3)), 1))


class _BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.body = nn.Sequential(_conv_bn(cin, cout, stride=stride), _conv_bn(cout, cout, act=None))
        same = stride == 1 and cin == cout
        self.shortcut = nn.Identity() if same else _conv_bn(cin, cout, kernel=1, stride=stride, act=None)
        self.act = nn.ReLU()

    def forward(self, x):
        return self.act(self.body(x) + self.shortcut(x))


class _InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int = 4):
        super().__init__()
        hidden = cin * expand
        self.body = nn.Sequential(
            _conv_bn(cin, hidden, kernel=1, act=nn.ReLU6),
            _conv_bn(hidden, hidden, stride=stride, groups=hidden, act=nn.ReLU6),
            _conv_bn(hidden, cout, kernel=1, act=None),  # linear bottleneck: no activation
        )
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        y = self.body(x)
        return x + y if self.residual else y


class _MixerBlock(nn.Module):
    def __init__(self, dim: int, kernel: int):
        super().__init__()
        self.spatial = nn.Sequential(nn.Conv2d(dim, dim, kernel, padding=kernel // 2, groups=dim), nn.GELU(), nn.BatchNorm2d(dim))
        self.channel = nn.Sequential(nn.Conv2d(dim, dim, 1), nn.GELU(), nn.BatchNorm2d(dim))

    def forward(self, x):
        return self.channel(x + self.spatial(x))


def plain(num_classes: int, width: int, depth: int) -> nn.Module:
    return PlainCNN(num_classes, width, depth)


def residual(num_classes: int, width: int, depth: int) -> nn.Module:
    blocks = OrderedDict(stem=_conv_bn(3, width))
    cin = width
    for i in range(depth):
        cout = _channels(width, i)
        blocks[f"block{i + 1}"] = _BasicBlock(cin, cout, stride=2 if i < 3 else 1)
        cin = cout
    return _Stack(blocks, cin, num_classes)


def inverted(num_classes: int, width: int, depth: int) -> nn.Module:
    # A strided stem, as in MobileNetV2: expanded activations at full resolution would cost
    # several times a plain host's training step.
    blocks = OrderedDict(stem=_conv_bn(3, width, stride=2, act=nn.ReLU6))
    cin = width
    for i in range(depth):
        cout = _channels(width, i)
        down = _InvertedResidual(cin, cout, stride=2 if i < 2 else 1)
        blocks[f"stage{i + 1}"] = nn.Sequential(down, _InvertedResidual(cout, cout, stride=1))
        cin = cout
    return _Stack(blocks, cin, num_classes)


def vgg(num_classes: int, width: int, depth: int) -> nn.Module:
    blocks = OrderedDict()
    cin = 3
    for i in range(depth):
        cout = _channels(width, i)
        blocks[f"stage{i + 1}"] = nn.Sequential(_conv_bn(cin, cout), _conv_bn(cout, cout), nn.MaxPool2d(2, 2))
        cin = cout
    return _Stack(blocks, cin, num_classes)


def convmixer(num_classes: int, width: int, depth: int, kernel: int = 3) -> nn.Module:
    # 3x3, not ConvMixer's usual larger kernels: a 5x5 depthwise conv trains over twice as slowly on a CPU.
    blocks = OrderedDict(stem=nn.Sequential(nn.Conv2d(3, width, 2, stride=2), nn.GELU(), nn.BatchNorm2d(width)))
    for i in range(depth):
        blocks[f"block{i + 1}"] = _MixerBlock(width, kernel)
    return _Stack(blocks, width, num_classes)


_FAMILIES = {"plain": plain, "residual": residual, "inverted": inverted, "vgg": vgg, "convmixer": convmixer}


def _builder(name: str) -> Callable[[int], nn.Module]:
    family, width, depth = name.split("-")
    return functools.partial(_FAMILIES[family], width=int(width.removeprefix("w")), depth=int(depth.removeprefix("b")))


HOSTS: dict[str, Callable[[int], nn.Module]] = {name: _builder(name) for name in TRAINING_HOSTS + UNSEEN_HOSTS}


def build_host(name: str, num_classes: int) -> nn.Module:
    """A fresh, randomly initialised host of the zoo."""
    if name not in HOSTS:
        raise ValueError(f"unknown host {name!r}; the zoo has {', '.join(HOSTS)}")
    return HOSTS[name](num_classes)
