"""Small data and hosts for the simic and CLI tests: every episode here takes seconds on a CPU."""

from __future__ import annotations

import hashlib

import torch
from torch import nn

from esper.data.splits import DataSplits, TensorData
from esper.leyline import Edit, Op

# Two seeds in a TinyCNN: block2's germinates, trains, blends and fossilizes; block1's is culled.
SCRIPT = [
    Edit(Op.GERMINATE, "block2", blueprint="conv_enhance", blend="linear", steps=1),
    Edit(Op.ADVANCE, "block2"),
    Edit(Op.GERMINATE, "block1", blueprint="attention", blend="sigmoid", steps=1),
    Edit(Op.ADVANCE, "block2"),  # -> BLENDING
    Edit(Op.FOSSILIZE, "block2"),
    Edit(Op.CULL, "block1"),
]


class TinyCNN(nn.Module):
    """Two conv blocks on 3x16x16 images: slots 'block1' (8 ch) and 'block2' (16 ch)."""

    def __init__(self, num_classes: int = 4):
        super().__init__()
        self.block1 = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.block2 = nn.Sequential(nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.pool = nn.MaxPool2d(2)
        self.head = nn.Linear(16, num_classes)

    def forward(self, x):
        x = self.pool(self.block1(x))
        x = self.block2(x)
        return self.head(x.mean(dim=(2, 3)))


def toy_data(n_train: int = 96, n_val: int = 32, classes: int = 4, seed: int = 0) -> DataSplits:
    """Class-coloured noise images: easy enough to learn in a couple of epochs."""
    g = torch.Generator().manual_seed(seed)

    def part(n):
        y = torch.randint(0, classes, (n,), generator=g)
        x = torch.randn(n, 3, 16, 16, generator=g) * 0.8
        x[:, 0] += (y.float() - classes / 2).view(-1, 1, 1) * 0.5
        return TensorData(x, y)

    return DataSplits(part(n_train), part(n_val), part(n_val), classes, [str(i) for i in range(classes)], "toy")


def state_hash(model: nn.Module) -> str:
    """One hash of every parameter's and buffer's name and bytes: equal only for equal models."""
    h = hashlib.sha256()
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        h.update(name.encode() + t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def tiny_config(**overrides):
    """The smallest TrainConfig that runs every part of PPO training: 2 episodes of 2
    environments, 2 epochs each; `overrides` as dotted keys ("env.lr": 0.02)."""
    from esper.runs import config as config_io
    from esper.simic.env import EnvConfig
    from esper.simic.training import TrainConfig
    from esper.tamiyo import ImitationConfig, PPOConfig

    cfg = TrainConfig(
        episodes=2,
        envs=2,
        hidden=16,
        env=EnvConfig(epochs=2, batch_size=32),
        ppo=PPOConfig(minibatch_size=4, update_epochs=2),
        imitation=ImitationConfig(max_epochs=3),
    )
    return config_io.with_overrides(cfg, overrides)
