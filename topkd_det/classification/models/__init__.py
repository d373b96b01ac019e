"""Classification model zoo: CIFAR-100 (CRD/mdistiller), ImageNet and Fashion-MNIST models, and the
ViT students of the locality-guidance setting (CIFAR-100 at 224 px).

Every model maps images to logits; ``model(x, return_features=True)`` returns
``(logits, feats)`` where ``feats`` (N x ``model.feature_dim``) is the input of the final linear
layer. CIFAR names are mdistiller's, and its teacher checkpoints load with ``strict=True``
(``model.load_state_dict(torch.load(path)["model"])``). ImageNet ResNets use torchvision's
lower-case names, which keeps them apart from the CIFAR ``ResNet50``.
"""

from typing import Callable, Dict, List

from torch import nn

from .base import FeatureClassifier
from .deit import deit_tiny
from .cifar_resnet import (
    resnet8,
    resnet14,
    resnet20,
    resnet32,
    resnet44,
    resnet56,
    resnet110,
    resnet8x4,
    resnet32x4,
)
from .fmnist import fmnist_student, fmnist_teacher
from .imagenet_resnet import resnet18, resnet34, resnet50
from .mobilenetv1 import MobileNetV1
from .pit import pit_tiny
from .pvt import pvt_tiny
from .t2t_vit import t2t_vit_7
from .vit_common import VIT_INPUT_SIZE
from .mobilenetv2 import MobileNetV2
from .resnetv2 import ResNet50
from .shufflenetv1 import ShuffleNetV1
from .shufflenetv2 import ShuffleNetV2
from .vgg import vgg8, vgg11, vgg13, vgg16, vgg19
from .wrn import wrn_16_1, wrn_16_2, wrn_16_4, wrn_28_2, wrn_28_4, wrn_40_1, wrn_40_2

__all__ = ["FIXED_INPUT_SIZE", "FeatureClassifier", "MODEL_REGISTRY", "UnknownModelError", "build_model",
           "list_models"]

_CANONICAL = {
    fn.__name__: fn
    for fn in (
        # CIFAR-100, 3x32x32
        resnet8,
        resnet14,
        resnet20,
        resnet32,
        resnet44,
        resnet56,
        resnet110,
        resnet8x4,
        resnet32x4,
        wrn_16_1,
        wrn_16_2,
        wrn_16_4,
        wrn_28_2,
        wrn_28_4,
        wrn_40_1,
        wrn_40_2,
        vgg8,
        vgg11,
        vgg13,
        vgg16,
        vgg19,
        ResNet50,
        MobileNetV2,
        ShuffleNetV1,
        ShuffleNetV2,
        # ImageNet, 3x224x224
        resnet18,
        resnet34,
        resnet50,
        MobileNetV1,
        # Fashion-MNIST, 1x28x28
        fmnist_teacher,
        fmnist_student,
        # ViT students, 3x224x224 (CIFAR-100 resized, the locality-guidance setting)
        deit_tiny,
        t2t_vit_7,
        pit_tiny,
        pvt_tiny,
    )
}
# Models whose position embeddings fix their input size; config validation holds the data to it.
FIXED_INPUT_SIZE = {name: VIT_INPUT_SIZE for name in ("deit_tiny", "t2t_vit_7", "pit_tiny", "pvt_tiny")}

# mdistiller's other spellings of the same constructors.
_ALIASES = {
    **{f"vgg{depth}_bn": f"vgg{depth}" for depth in (8, 11, 13, 16, 19)},
    "mobile_half": "MobileNetV2",
    "ShuffleV1": "ShuffleNetV1",
    "ShuffleV2": "ShuffleNetV2",
}

MODEL_REGISTRY: Dict[str, Callable[..., FeatureClassifier]] = {
    **_CANONICAL,
    **{alias: _CANONICAL[target] for alias, target in _ALIASES.items()},
}


class UnknownModelError(KeyError, ValueError):
    """Raised by ``build_model``; catchable both as a failed lookup and as a bad argument."""

    def __str__(self) -> str:  # KeyError would print the message quoted, as a repr
        return str(self.args[0])


def list_models() -> List[str]:
    return sorted(MODEL_REGISTRY)


def build_model(name: str, num_classes: int) -> nn.Module:
    try:
        constructor = MODEL_REGISTRY[name]
    except KeyError:
        raise UnknownModelError(
            f"unknown model {name!r}; valid names: {', '.join(list_models())}"
        ) from None
    return constructor(num_classes=num_classes)
