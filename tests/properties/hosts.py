"""Hypothesis strategies for random hosts: stacks of conv, residual and attention blocks."""

from __future__ import annotations

import torch
from hypothesis import strategies as st
from torch import nn


class ConvBlock(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)
        self.norm = nn.BatchNorm2d(c)

    def forward(self, x):
        return torch.relu(self.norm(self.conv(x)))


class ResidualBlock(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.a = nn.Conv2d(c, c, 3, padding=1)
        self.b = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x):
        return torch.relu(x + self.b(torch.relu(self.a(x))))


class SpatialAttentionBlock(nn.Module):
    """Self-attention over the pixels of a feature map."""

    def __init__(self, c):
        super().__init__()
        self.norm = nn.GroupNorm(1, c)
        self.attn = nn.MultiheadAttention(c, 2 if c % 2 == 0 else 1, batch_first=True)

    def forward(self, x):
        b, c, h, w = x.shape
        seq = self.norm(x).flatten(2).transpose(1, 2)
        out, _ = self.attn(seq, seq, seq, need_weights=False)
        return x + out.transpose(1, 2).reshape(b, c, h, w)


class TokenBlock(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.norm = nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, 2, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))

    def forward(self, x):
        y = self.norm(x)
        x = x + self.attn(y, y, y, need_weights=False)[0]
        return x + self.mlp(x)


CONV_KINDS = {"conv": ConvBlock, "residual": ResidualBlock, "attention": SpatialAttentionBlock}


class RandomCNN(nn.Module):
    def __init__(self, kinds: list[str], channels: int, pools: list[bool]):
        super().__init__()
        self.stem = nn.Conv2d(3, channels, 3, padding=1)
        self.blocks = nn.Sequential(*[CONV_KINDS[k](channels) for k in kinds])
        self.pools = pools
        self.head = nn.Linear(channels, 5)

    def forward(self, x):
        x = self.stem(x)
        for block, pool in zip(self.blocks, self.pools):
            x = block(x)
            if pool:
                x = torch.nn.functional.max_pool2d(x, 2)
        return self.head(x.mean((2, 3)))


class RandomTransformer(nn.Module):
    def __init__(self, depth: int, dim: int):
        super().__init__()
        self.embed = nn.Embedding(50, dim)
        self.blocks = nn.ModuleList(TokenBlock(dim) for _ in range(depth))
        self.head = nn.Linear(dim, 50)

    def forward(self, idx):
        x = self.embed(idx)
        for b in self.blocks:
            x = b(x)
        return self.head(x)


@st.composite
def random_hosts(draw):
    """(model, example input) pairs: random CNN stacks or small transformers."""
    seed = draw(st.integers(0, 2**16))
    torch.manual_seed(seed)
    if draw(st.booleans()):
        batch = draw(st.integers(2, 3))  # BatchNorm in train mode needs two values per channel
        depth = draw(st.integers(3, 6))
        kinds = draw(st.lists(st.sampled_from(sorted(CONV_KINDS)), min_size=depth, max_size=depth))
        pools = draw(st.lists(st.booleans(), min_size=depth, max_size=depth))
        size = 2 ** sum(pools) * draw(st.sampled_from([1, 2]))
        channels = draw(st.sampled_from([4, 6, 8]))
        return RandomCNN(kinds, channels, pools), torch.randn(batch, 3, size, size)
    batch = draw(st.integers(1, 3))
    depth = draw(st.integers(3, 5))
    dim = draw(st.sampled_from([8, 16]))
    return RandomTransformer(depth, dim), torch.randint(0, 50, (batch, draw(st.integers(2, 7))))
