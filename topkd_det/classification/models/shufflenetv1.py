"""The CIFAR ShuffleNetV1 (g=3) of the CRD/mdistiller zoo (their ``ShuffleV1``).

1x1 stem without down-sampling, three stages; names follow mdistiller
``models/cifar/ShuffleNetv1.py``.
"""

import torch
import torch.nn.functional as F
from torch import nn

from .base import FeatureClassifier
from .layers import channel_shuffle, global_avg_pool

_STEM = 24


class ShuffleUnit(nn.Module):
    """Stride-2 units concatenate an avg-pooled shortcut, stride-1 units add the identity."""

    def __init__(self, cin: int, cout: int, stride: int, groups: int):
        super().__init__()
        self.stride = stride
        mid = cout // 4
        # The stem has too few channels to split, so the first unit's 1x1 is dense.
        self.in_groups = 1 if cin == _STEM else groups
        self.conv1 = nn.Conv2d(cin, mid, 1, groups=self.in_groups, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, mid, 3, stride=stride, padding=1, groups=mid, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, cout, 1, groups=groups, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = channel_shuffle(out, self.in_groups)
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.stride == 2:
            return F.relu(torch.cat([out, F.avg_pool2d(x, 3, stride=2, padding=1)], 1))
        return F.relu(out + x)


class ShuffleNetV1Cifar(FeatureClassifier):
    head_name = "linear"

    def __init__(self, widths=(240, 480, 960), blocks=(4, 8, 4), groups=3, num_classes=100):
        super().__init__()
        self.conv1 = nn.Conv2d(3, _STEM, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(_STEM)
        cins = (_STEM,) + tuple(widths[:-1])
        self.layer1 = self._stage(cins[0], widths[0], blocks[0], groups)
        self.layer2 = self._stage(cins[1], widths[1], blocks[1], groups)
        self.layer3 = self._stage(cins[2], widths[2], blocks[2], groups)
        self.linear = nn.Linear(widths[2], num_classes)

    @staticmethod
    def _stage(cin: int, cout: int, blocks: int, groups: int) -> nn.Sequential:
        # The first unit's branch only adds what the concatenated shortcut lacks.
        units = [ShuffleUnit(cin, cout - cin, stride=2, groups=groups)]
        units += [ShuffleUnit(cout, cout, stride=1, groups=groups) for _ in range(blocks - 1)]
        return nn.Sequential(*units)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return global_avg_pool(x)


def ShuffleNetV1(num_classes: int = 100) -> ShuffleNetV1Cifar:
    return ShuffleNetV1Cifar(num_classes=num_classes)
