"""A compact ResNet-50 (He et al., 2015, in torchvision's layout, "v1.5": the stride sits on the 3x3
convolution), written here because torchvision is not a dependency. ``bench.gpu`` serves it from random
weights: the point is a model of ResNet-50's size and cost (25.6 million parameters, about 4.1 GFLOPs per
224x224 image), not its accuracy.

``width`` scales every channel count (64 is ResNet-50 itself); ``bench.gpu --dry-run`` uses a narrow copy so a
machine without a GPU runs the same steps in seconds.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["BLOCKS", "Bottleneck", "ResNet", "resnet50"]

#: bottleneck blocks per stage: ResNet-50
BLOCKS = (3, 4, 6, 3)
_EXPANSION = 4


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (carrying the stride), 1x1 expand; a projected shortcut where the shape changes."""

    def __init__(self, in_channels: int, channels: int, stride: int) -> None:
        super().__init__()
        out_channels = channels * _EXPANSION
        self.conv1 = nn.Conv2d(in_channels, channels, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.conv3 = nn.Conv2d(channels, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        if stride != 1 or in_channels != out_channels:
            self.downsample: nn.Module = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )
        else:
            self.downsample = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + self.downsample(x))


class ResNet(nn.Module):
    """Stem (7x7/2 convolution, 3x3/2 max pool), four stages of bottlenecks, average pool, classifier."""

    def __init__(self, blocks: tuple[int, ...] = BLOCKS, classes: int = 1000, width: int = 64) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        stages: list[nn.Module] = []
        in_channels = width
        for index, count in enumerate(blocks):
            channels = width * 2**index
            layers = []
            for block in range(count):
                layers.append(Bottleneck(in_channels, channels, 2 if block == 0 and index > 0 else 1))
                in_channels = channels * _EXPANSION
            stages.append(nn.Sequential(*layers))
        self.layers = nn.Sequential(*stages)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_channels, classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        for module in self.modules():  # each residual branch starts at zero, so random weights stay finite
            if isinstance(module, Bottleneck):
                nn.init.zeros_(module.bn3.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layers(x)
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet50(classes: int = 1000, width: int = 64, seed: int = 0) -> ResNet:
    """ResNet-50 with random weights drawn from ``seed``, in eval mode (batch norm on running statistics)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return ResNet(BLOCKS, classes, width).eval()
