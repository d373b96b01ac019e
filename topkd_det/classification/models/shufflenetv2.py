"""The CIFAR ShuffleNetV2 (1x) of the CRD/mdistiller zoo (their ``ShuffleV2``).

1x1 stem without down-sampling, three stages each opened by a down-sampling unit, then a 1x1
conv to 1024 channels; names follow mdistiller ``models/cifar/ShuffleNetv2.py``.
"""

import torch
import torch.nn.functional as F
from torch import nn

from .base import FeatureClassifier
from .layers import channel_shuffle, global_avg_pool

_STEM = 24


def _dw3x3(channels: int, stride: int) -> nn.Conv2d:
    return nn.Conv2d(channels, channels, 3, stride, 1, groups=channels, bias=False)


def _pw(cin: int, cout: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 1, bias=False)


class SplitUnit(nn.Module):
    """Stride-1 unit: half the channels pass through, the other half go through the branch."""

    def __init__(self, channels: int):
        super().__init__()
        half = channels // 2
        self.conv1 = _pw(half, half)
        self.bn1 = nn.BatchNorm2d(half)
        self.conv2 = _dw3x3(half, 1)
        self.bn2 = nn.BatchNorm2d(half)
        self.conv3 = _pw(half, half)
        self.bn3 = nn.BatchNorm2d(half)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        keep, branch = x.chunk(2, dim=1)
        out = F.relu(self.bn1(self.conv1(branch)))
        out = self.bn2(self.conv2(out))
        out = F.relu(self.bn3(self.conv3(out)))
        return channel_shuffle(torch.cat([keep, out], 1), 2)


class DownUnit(nn.Module):
    """Stride-2 unit: both halves of the output see the whole input."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        mid = cout // 2
        # left branch: dw -> pw
        self.conv1 = _dw3x3(cin, 2)
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv2 = _pw(cin, mid)
        self.bn2 = nn.BatchNorm2d(mid)
        # right branch: pw -> dw -> pw
        self.conv3 = _pw(cin, mid)
        self.bn3 = nn.BatchNorm2d(mid)
        self.conv4 = _dw3x3(mid, 2)
        self.bn4 = nn.BatchNorm2d(mid)
        self.conv5 = _pw(mid, mid)
        self.bn5 = nn.BatchNorm2d(mid)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        left = F.relu(self.bn2(self.conv2(self.bn1(self.conv1(x)))))
        right = F.relu(self.bn3(self.conv3(x)))
        right = F.relu(self.bn5(self.conv5(self.bn4(self.conv4(right)))))
        return channel_shuffle(torch.cat([left, right], 1), 2)


class ShuffleNetV2Cifar(FeatureClassifier):
    head_name = "linear"

    def __init__(self, widths=(116, 232, 464, 1024), blocks=(3, 7, 3), num_classes=100):
        super().__init__()
        self.conv1 = nn.Conv2d(3, _STEM, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(_STEM)
        self.layer1 = self._stage(_STEM, widths[0], blocks[0])
        self.layer2 = self._stage(widths[0], widths[1], blocks[1])
        self.layer3 = self._stage(widths[1], widths[2], blocks[2])
        self.conv2 = _pw(widths[2], widths[3])
        self.bn2 = nn.BatchNorm2d(widths[3])
        self.linear = nn.Linear(widths[3], num_classes)

    @staticmethod
    def _stage(cin: int, cout: int, blocks: int) -> nn.Sequential:
        return nn.Sequential(DownUnit(cin, cout), *(SplitUnit(cout) for _ in range(blocks)))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return global_avg_pool(F.relu(self.bn2(self.conv2(x))))


def ShuffleNetV2(num_classes: int = 100) -> ShuffleNetV2Cifar:
    return ShuffleNetV2Cifar(num_classes=num_classes)
