"""Wide ResNets (Zagoruyko & Komodakis 2016) as in the CRD/mdistiller zoo.

Pre-activation blocks; attribute names (``block1.layer.0.convShortcut`` ...) follow mdistiller
``models/cifar/wrn.py`` so its wrn_40_2 teacher checkpoint loads with ``strict=True``.
"""

import torch
import torch.nn.functional as F
from torch import nn

from .base import FeatureClassifier
from .layers import global_avg_pool, init_weights_


class PreActBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, stride=1, padding=1, bias=False)
        # Only channel-changing blocks have a projection (and a key in the checkpoints).
        self.convShortcut = None
        if cin != cout:
            self.convShortcut = nn.Conv2d(cin, cout, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = F.relu(self.bn1(x))
        out = self.conv2(F.relu(self.bn2(self.conv1(act))))
        # The projection sees the pre-activated input, the identity the raw one.
        shortcut = x if self.convShortcut is None else self.convShortcut(act)
        return out + shortcut


class NetworkBlock(nn.Module):
    """One resolution stage; the extra ``layer`` level mirrors the checkpoint key paths."""

    def __init__(self, blocks: int, cin: int, cout: int, stride: int):
        super().__init__()
        layers = [PreActBlock(cin, cout, stride)]
        layers += [PreActBlock(cout, cout, 1) for _ in range(blocks - 1)]
        self.layer = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


class WideResNet(FeatureClassifier):
    def __init__(self, depth: int, widen_factor: int, num_classes: int = 100):
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"depth must be 6n+4, got {depth}")
        n = (depth - 4) // 6
        widths = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.conv1 = nn.Conv2d(3, widths[0], 3, stride=1, padding=1, bias=False)
        self.block1 = NetworkBlock(n, widths[0], widths[1], 1)
        self.block2 = NetworkBlock(n, widths[1], widths[2], 2)
        self.block3 = NetworkBlock(n, widths[2], widths[3], 2)
        self.bn1 = nn.BatchNorm2d(widths[3])
        self.fc = nn.Linear(widths[3], num_classes)
        init_weights_(self)
        nn.init.zeros_(self.fc.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block3(self.block2(self.block1(self.conv1(x))))
        return global_avg_pool(F.relu(self.bn1(x)))


def wrn_16_1(num_classes: int = 100) -> WideResNet:
    return WideResNet(16, 1, num_classes)


def wrn_16_2(num_classes: int = 100) -> WideResNet:
    return WideResNet(16, 2, num_classes)


def wrn_16_4(num_classes: int = 100) -> WideResNet:
    return WideResNet(16, 4, num_classes)


def wrn_28_2(num_classes: int = 100) -> WideResNet:
    return WideResNet(28, 2, num_classes)


def wrn_28_4(num_classes: int = 100) -> WideResNet:
    return WideResNet(28, 4, num_classes)


def wrn_40_1(num_classes: int = 100) -> WideResNet:
    return WideResNet(40, 1, num_classes)


def wrn_40_2(num_classes: int = 100) -> WideResNet:
    return WideResNet(40, 2, num_classes)
