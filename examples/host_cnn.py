"""The design document's HostCNN: three conv blocks (32, 64, 128 channels) and a classifier.

`width` scales every block's channels and `blocks` deepens the stack (channels double up
to the third block, then stay; each block halves the image), so one file also gives the
narrow and deep hosts of the evidence benchmark (`tools/evidence.py`).
"""

import torch
from torch import nn


class ConvBlock(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.act = nn.ReLU()

    def forward(self, x):
        return self.act(self.bn(self.conv(x)))


class HostCNN(nn.Module):
    def __init__(self, num_classes: int = 10, width: int = 32, blocks: int = 3):
        super().__init__()
        if blocks < 1 or width < 1:
            raise ValueError(f"HostCNN needs at least one block and one channel, got blocks={blocks}, width={width}")
        channels = [3] + [width * 2 ** min(i, 2) for i in range(blocks)]
        for i in range(blocks):
            self.add_module(f"block{i + 1}", ConvBlock(channels[i], channels[i + 1]))
        self.blocks = blocks
        self.pool = nn.MaxPool2d(2, 2)
        self.classifier = nn.Linear(channels[-1], num_classes)

    def forward(self, x):
        for i in range(self.blocks):
            x = self.pool(getattr(self, f"block{i + 1}")(x))
        return self.classifier(torch.flatten(x.mean(dim=(2, 3)), 1))


def build_model() -> nn.Module:
    return HostCNN()
