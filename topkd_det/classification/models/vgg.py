"""CIFAR VGGs with batch norm, as in the CRD/mdistiller zoo (its ``vgg*_bn``).

Five conv blocks ``block0..block4`` and a single 512-d linear ``classifier``; names and the
biased convs follow mdistiller ``models/cifar/vgg.py`` so its vgg13 teacher loads strictly.
"""

from typing import List, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .base import FeatureClassifier
from .layers import global_avg_pool, init_weights_

# Output widths of the convs in each of the five blocks.
_CONFIGS = {
    8: [[64], [128], [256], [512], [512]],
    11: [[64], [128], [256, 256], [512, 512], [512, 512]],
    13: [[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]],
    16: [[64, 64], [128, 128], [256] * 3, [512] * 3, [512] * 3],
    19: [[64, 64], [128, 128], [256] * 4, [512] * 4, [512] * 4],
}


def _conv_block(cin: int, widths: Sequence[int]) -> nn.Sequential:
    layers: List[nn.Module] = []
    for cout in widths:
        layers += [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
        cin = cout
    # The block ends at its last BN and forward applies that ReLU, as in mdistiller: hooks on
    # block[-1] then see pre-activations, which its OFD-style distillers expect.
    return nn.Sequential(*layers[:-1])


class VGG(FeatureClassifier):
    head_name = "classifier"

    def __init__(self, config: Sequence[Sequence[int]], num_classes: int = 100):
        super().__init__()
        cins = [3] + [widths[-1] for widths in config[:-1]]
        self.block0 = _conv_block(cins[0], config[0])
        self.block1 = _conv_block(cins[1], config[1])
        self.block2 = _conv_block(cins[2], config[2])
        self.block3 = _conv_block(cins[3], config[3])
        self.block4 = _conv_block(cins[4], config[4])
        self.classifier = nn.Linear(config[4][-1], num_classes)
        init_weights_(self, linear_std=0.01)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        # Pooling after the first three blocks only: on 32x32 inputs block3 and block4 both
        # run at 4x4, as in the zoo's CIFAR models.
        for block in (self.block0, self.block1, self.block2):
            x = F.max_pool2d(F.relu(block(x)), 2)
        x = F.relu(self.block3(x))
        x = F.relu(self.block4(x))
        return global_avg_pool(x)


def vgg8(num_classes: int = 100) -> VGG:
    return VGG(_CONFIGS[8], num_classes)


def vgg11(num_classes: int = 100) -> VGG:
    return VGG(_CONFIGS[11], num_classes)


def vgg13(num_classes: int = 100) -> VGG:
    return VGG(_CONFIGS[13], num_classes)


def vgg16(num_classes: int = 100) -> VGG:
    return VGG(_CONFIGS[16], num_classes)


def vgg19(num_classes: int = 100) -> VGG:
    return VGG(_CONFIGS[19], num_classes)
