"""The CIFAR ResNet50 of the CRD/mdistiller zoo (3x3 stem, no max-pool, four stages).

Attribute names (``shortcut``, ``linear``) follow mdistiller ``models/cifar/resnetv2.py`` so its
ResNet50 teacher checkpoint loads with ``strict=True``.
"""

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .base import FeatureClassifier
from .layers import global_avg_pool, init_weights_


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int = 1):
        super().__init__()
        cout = planes * self.expansion
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        # An empty Sequential is the identity and, unlike None, matches the checkpoint layout.
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + self.shortcut(x))


def _stage(cin: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
    cout = planes * Bottleneck.expansion
    layers = [Bottleneck(cin, planes, stride)]
    layers += [Bottleneck(cout, planes) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


class CifarResNetV2(FeatureClassifier):
    head_name = "linear"

    def __init__(self, blocks_per_stage: Sequence[int], num_classes: int = 100):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        # Input widths are the previous stage's planes x 4 (bottleneck expansion).
        self.layer1 = _stage(64, 64, blocks_per_stage[0], stride=1)
        self.layer2 = _stage(256, 128, blocks_per_stage[1], stride=2)
        self.layer3 = _stage(512, 256, blocks_per_stage[2], stride=2)
        self.layer4 = _stage(1024, 512, blocks_per_stage[3], stride=2)
        self.linear = nn.Linear(512 * Bottleneck.expansion, num_classes)
        init_weights_(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return global_avg_pool(x)


def ResNet50(num_classes: int = 100) -> CifarResNetV2:
    return CifarResNetV2((3, 4, 6, 3), num_classes)
