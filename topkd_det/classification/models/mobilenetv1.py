"""The ImageNet MobileNetV1 (Howard et al. 2017) of the mdistiller zoo.

Keys ``model.<i>.<j>`` / ``fc`` follow mdistiller ``models/imagenet/mobilenetv1.py``. Its trailing
``AvgPool2d(7)`` holds no weights, so pooling is adaptive and outside ``model``: other input
sizes work too.
"""

import torch
from torch import nn

from .base import FeatureClassifier
from .layers import conv_bn_relu, global_avg_pool


def _depthwise_separable(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        *conv_bn_relu(cin, cin, 3, stride, groups=cin), *conv_bn_relu(cin, cout, 1, 1)
    )


# (output channels, stride) of the 13 depthwise-separable blocks after the stem.
_MOBILENET_V1_BLOCKS = [
    (64, 1),
    (128, 2),
    (128, 1),
    (256, 2),
    (256, 1),
    (512, 2),
    (512, 1),
    (512, 1),
    (512, 1),
    (512, 1),
    (512, 1),
    (1024, 2),
    (1024, 1),
]


class MobileNetV1Net(FeatureClassifier):
    def __init__(self, num_classes: int = 1000):
        super().__init__()
        layers = [nn.Sequential(*conv_bn_relu(3, 32, 3, 2))]
        cin = 32
        for cout, stride in _MOBILENET_V1_BLOCKS:
            layers.append(_depthwise_separable(cin, cout, stride))
            cin = cout
        self.model = nn.Sequential(*layers)
        self.fc = nn.Linear(cin, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return global_avg_pool(self.model(x))


def MobileNetV1(num_classes: int = 1000) -> MobileNetV1Net:
    return MobileNetV1Net(num_classes)
