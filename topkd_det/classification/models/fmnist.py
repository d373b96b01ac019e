"""A teacher/student CNN pair for the fast 28x28 grayscale Fashion-MNIST benchmark.

Sized so a distillation run is a CPU job: the teacher spends its parameters in a hidden linear
layer on a 3x3 map rather than in convs at full resolution, which would dominate the FLOPs.
"""

import torch
import torch.nn.functional as F
from torch import nn

from .base import FeatureClassifier
from .layers import conv_bn_relu, init_weights_


class FashionTeacher(FeatureClassifier):
    """4 conv layers (16-32-64-128, pooled 28->14->7->3) and a 512-d hidden layer, ~0.69M params."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1):
        super().__init__()
        self.features = nn.Sequential(
            *conv_bn_relu(in_channels, 16, 3, 1),
            nn.MaxPool2d(2),
            *conv_bn_relu(16, 32, 3, 1),
            nn.MaxPool2d(2),
            *conv_bn_relu(32, 64, 3, 1),
            nn.MaxPool2d(2),
            *conv_bn_relu(64, 128, 3, 1),
        )
        self.hidden = nn.Linear(128 * 3 * 3, 512)
        self.dropout = nn.Dropout(0.3)
        self.fc = nn.Linear(512, num_classes)
        init_weights_(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(self.features(x), 1)
        # The head's input includes dropout; it is the identity in eval, where teachers run.
        return self.dropout(F.relu(self.hidden(x)))


class FashionStudent(FeatureClassifier):
    """2 conv layers (16-32, pooled to 7x7) straight into the classifier, ~20k params."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1):
        super().__init__()
        self.features = nn.Sequential(
            *conv_bn_relu(in_channels, 16, 3, 1),
            nn.MaxPool2d(2),
            *conv_bn_relu(16, 32, 3, 1),
            nn.MaxPool2d(2),
        )
        self.fc = nn.Linear(32 * 7 * 7, num_classes)
        init_weights_(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.features(x), 1)


def fmnist_teacher(num_classes: int = 10, in_channels: int = 1) -> FashionTeacher:
    return FashionTeacher(num_classes, in_channels)


def fmnist_student(num_classes: int = 10, in_channels: int = 1) -> FashionStudent:
    return FashionStudent(num_classes, in_channels)
