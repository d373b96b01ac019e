"""torchvision's ImageNet ResNets under the zoo's forward contract.

Subclassing keeps torchvision's state_dict keys, so its weight files load with ``strict=True``;
nothing is downloaded here.
"""

import torch
from torchvision.models import resnet as tv_resnet

from .base import FeatureClassifier


class TorchvisionResNet(FeatureClassifier, tv_resnet.ResNet):
    """torchvision ResNet whose forward follows the zoo's contract (logits [, features])."""

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.avgpool(x), 1)


def resnet18(num_classes: int = 1000) -> TorchvisionResNet:
    return TorchvisionResNet(tv_resnet.BasicBlock, [2, 2, 2, 2], num_classes=num_classes)


def resnet34(num_classes: int = 1000) -> TorchvisionResNet:
    return TorchvisionResNet(tv_resnet.BasicBlock, [3, 4, 6, 3], num_classes=num_classes)


def resnet50(num_classes: int = 1000) -> TorchvisionResNet:
    return TorchvisionResNet(tv_resnet.Bottleneck, [3, 4, 6, 3], num_classes=num_classes)
