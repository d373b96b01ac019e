"""The CIFAR MobileNetV2 of the CRD/mdistiller zoo (their ``mobile_half``: width 0.5, t=6).

Unlike the ImageNet design every block keeps its expansion conv (also when t=1) and the stem
has stride 2, so a 32x32 input ends at 2x2. Names follow mdistiller ``models/cifar/mobilenetv2.py``.
"""

import torch
from torch import nn

from .base import FeatureClassifier
from .layers import conv_bn_relu, global_avg_pool, init_weights_

# (expansion, output channels, blocks, first stride); None = the model's expansion ratio.
_STAGES = [
    (1, 16, 1, 1),
    (None, 24, 2, 1),
    (None, 32, 3, 2),
    (None, 64, 4, 2),
    (None, 96, 3, 1),
    (None, 160, 3, 2),
    (None, 320, 1, 1),
]


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expansion: int):
        super().__init__()
        mid = cin * expansion
        self.use_residual = stride == 1 and cin == cout
        self.conv = nn.Sequential(
            nn.Conv2d(cin, mid, 1, bias=False),
            nn.BatchNorm2d(mid),
            nn.ReLU(inplace=True),
            nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False),
            nn.BatchNorm2d(mid),
            nn.ReLU(inplace=True),
            nn.Conv2d(mid, cout, 1, bias=False),
            nn.BatchNorm2d(cout),  # linear bottleneck: no activation
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        return x + out if self.use_residual else out


class MobileNetV2Cifar(FeatureClassifier):
    head_name = "classifier.0"

    def __init__(self, num_classes: int = 100, width_mult: float = 0.5, expansion: int = 6):
        super().__init__()
        cin = int(32 * width_mult)
        self.conv1 = nn.Sequential(*conv_bn_relu(3, cin, 3, stride=2))
        self.blocks = nn.ModuleList()
        for t, c, n, s in _STAGES:
            cout = int(c * width_mult)
            stage = []
            for stride in [s] + [1] * (n - 1):
                stage.append(InvertedResidual(cin, cout, stride, t or expansion))
                cin = cout
            self.blocks.append(nn.Sequential(*stage))
        # The zoo narrows the blocks but never the 1280-d head below width 1.
        last = int(1280 * width_mult) if width_mult > 1.0 else 1280
        self.conv2 = nn.Sequential(*conv_bn_relu(cin, last, 1, stride=1))
        self.classifier = nn.Sequential(nn.Linear(last, num_classes))
        init_weights_(self, linear_std=0.01)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        for stage in self.blocks:
            x = stage(x)
        return global_avg_pool(self.conv2(x))


def MobileNetV2(num_classes: int = 100) -> MobileNetV2Cifar:
    return MobileNetV2Cifar(num_classes, width_mult=0.5, expansion=6)
