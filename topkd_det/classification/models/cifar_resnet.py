"""CIFAR ResNets (He et al. 2016, 6n+2 layers) as in the CRD/mdistiller zoo.

Attribute names follow mdistiller ``models/cifar/resnet.py`` so its teacher checkpoints
(resnet56, resnet110, resnet32x4) load with ``strict=True``.
"""

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .base import FeatureClassifier
from .layers import global_avg_pool, init_weights_


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = _conv3x3(cin, cout, stride)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = _conv3x3(cout, cout)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(
                nn.Conv2d(cin, cout, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(cout),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return F.relu(out + shortcut)


class CifarResNet(FeatureClassifier):
    """Three stages at 32, 16 and 8 pixels; ``widths`` = (stem, stage1, stage2, stage3)."""

    def __init__(self, depth: int, widths: Sequence[int], num_classes: int = 100):
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"depth must be 6n+2 for basic blocks, got {depth}")
        blocks_per_stage = (depth - 2) // 6
        self.conv1 = _conv3x3(3, widths[0])
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.layer1 = self._stage(widths[0], widths[1], blocks_per_stage, stride=1)
        self.layer2 = self._stage(widths[1], widths[2], blocks_per_stage, stride=2)
        self.layer3 = self._stage(widths[2], widths[3], blocks_per_stage, stride=2)
        self.fc = nn.Linear(widths[3], num_classes)
        init_weights_(self)

    @staticmethod
    def _stage(cin: int, cout: int, blocks: int, stride: int) -> nn.Sequential:
        layers = [BasicBlock(cin, cout, stride)]
        layers += [BasicBlock(cout, cout) for _ in range(blocks - 1)]
        return nn.Sequential(*layers)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return global_avg_pool(x)


_NARROW = (16, 16, 32, 64)
_WIDE = (32, 64, 128, 256)  # the "x4" variants


def resnet8(num_classes: int = 100) -> CifarResNet:
    return CifarResNet(8, _NARROW, num_classes)


def resnet14(num_classes: int = 100) -> CifarResNet:
    return CifarResNet(14, _NARROW, num_classes)


def resnet20(num_classes: int = 100) -> CifarResNet:
    return CifarResNet(20, _NARROW, num_classes)


def resnet32(num_classes: int = 100) -> CifarResNet:
    return CifarResNet(32, _NARROW, num_classes)


def resnet44(num_classes: int = 100) -> CifarResNet:
    return CifarResNet(44, _NARROW, num_classes)


def resnet56(num_classes: int = 100) -> CifarResNet:
    return CifarResNet(56, _NARROW, num_classes)


def resnet110(num_classes: int = 100) -> CifarResNet:
    return CifarResNet(110, _NARROW, num_classes)


def resnet8x4(num_classes: int = 100) -> CifarResNet:
    return CifarResNet(8, _WIDE, num_classes)


def resnet32x4(num_classes: int = 100) -> CifarResNet:
    return CifarResNet(32, _WIDE, num_classes)
