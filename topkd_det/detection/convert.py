"""Rename torchvision ImageNet state dicts into Detectron2 student initialisations.

The output names are the exact ``state_dict`` names of a Detectron2 FPN detector
(``backbone.bottom_up.*``) and the checkpoint says ``matching_heuristics: False``, so
``DetectionCheckpointer`` loads it by name as it is. Detectron2's own converter writes
bottom-up-relative names and relies on suffix matching instead; that guesses, and it refuses a
key that fits several modules, as in a distillation wrapper whose teacher and student share
layer names. The price: these files only fit FPN models, whose bottom-up sits at
``backbone.bottom_up``.

``num_batches_tracked`` is dropped: it is a training counter that FrozenBatchNorm2d has no
buffer for, and BatchNorm2d fills it in when a checkpoint lacks it.
"""
import re
from typing import Dict, Mapping, Optional

import numpy as np
import torch

from .backbones import mobilenetv2_block_specs

__all__ = ["ARCHS", "BOTTOM_UP_PREFIX", "convert_torchvision", "rename_torchvision"]

BOTTOM_UP_PREFIX = "backbone.bottom_up."
_NORM_FIELDS = ("weight", "bias", "running_mean", "running_var")
_NORM_FIELD = "(" + "|".join(_NORM_FIELDS) + ")"

# torchvision name pattern -> Detectron2 ResNet name (detectron2.modeling.backbone.resnet).
_RESNET_RULES = (
    (r"conv1\.weight", lambda m: "stem.conv1.weight"),
    (rf"bn1\.{_NORM_FIELD}", lambda m: f"stem.conv1.norm.{m[1]}"),
    (
        r"layer(\d)\.(\d+)\.conv(\d)\.weight",
        lambda m: f"res{int(m[1]) + 1}.{m[2]}.conv{m[3]}.weight",
    ),
    (
        rf"layer(\d)\.(\d+)\.bn(\d)\.{_NORM_FIELD}",
        lambda m: f"res{int(m[1]) + 1}.{m[2]}.conv{m[3]}.norm.{m[4]}",
    ),
    (
        r"layer(\d)\.(\d+)\.downsample\.0\.weight",
        lambda m: f"res{int(m[1]) + 1}.{m[2]}.shortcut.weight",
    ),
    (
        rf"layer(\d)\.(\d+)\.downsample\.1\.{_NORM_FIELD}",
        lambda m: f"res{int(m[1]) + 1}.{m[2]}.shortcut.norm.{m[3]}",
    ),
)


def _resnet_name(key: str) -> Optional[str]:
    for pattern, rename in _RESNET_RULES:
        match = re.fullmatch(pattern, key)
        if match:
            return rename(match)
    return None


def _mobilenetv2_layers(expand_ratio: Optional[int]) -> Dict[str, str]:
    """torchvision sub-module path -> ours, inside one entry of ``features``."""
    if expand_ratio is None:  # Conv2dNormActivation: [conv, norm, ReLU6]
        return {"0": "conv", "1": "conv.norm"}
    # InvertedResidual.conv: one Conv2dNormActivation per name below, then the projection conv and
    # its norm as two separate entries.
    convs = (["expand"] if expand_ratio != 1 else []) + ["depthwise"]
    layers = {}
    for i, name in enumerate(convs):
        layers[f"conv.{i}.0"] = name
        layers[f"conv.{i}.1"] = f"{name}.norm"
    layers[f"conv.{len(convs)}"] = "project"
    layers[f"conv.{len(convs) + 1}"] = "project.norm"
    return layers


def _mobilenetv2_names() -> Dict[str, str]:
    names = {}
    position_in_stage: Dict[str, int] = {}
    # Names do not depend on the width multiplier, only shapes do.
    for index, spec in enumerate(mobilenetv2_block_specs()):
        position = position_in_stage.get(spec.stage, 0)
        position_in_stage[spec.stage] = position + 1
        for tv_layer, layer in _mobilenetv2_layers(spec.expand_ratio).items():
            fields = _NORM_FIELDS if layer.endswith("norm") else ("weight",)
            for field in fields:
                ours = f"{spec.stage}.{position}.{layer}.{field}"
                names[f"features.{index}.{tv_layer}.{field}"] = ours
    return names


_MOBILENETV2_NAMES = _mobilenetv2_names()

# arch -> (prefix of torchvision's ImageNet classifier, which is dropped;
#          renaming of the remaining keys, returning None for a key it does not know)
ARCHS = {
    "resnet": ("fc.", _resnet_name),
    "mobilenetv2": ("classifier.", _MOBILENETV2_NAMES.get),
}


def rename_torchvision(keys, arch: str) -> Dict[str, str]:
    """
    Map torchvision state-dict keys to Detectron2 names (with the ``backbone.bottom_up.`` prefix).
    The classifier and ``num_batches_tracked`` are left out. Raises ValueError for an unknown arch
    or for keys that are not part of the architecture.
    """
    if arch not in ARCHS:
        raise ValueError(f"Unknown arch {arch!r}; choose one of {sorted(ARCHS)}")
    classifier_prefix, rename = ARCHS[arch]
    names, unrecognised = {}, []
    for key in keys:
        if key.startswith(classifier_prefix) or key.endswith(".num_batches_tracked"):
            continue
        name = rename(key)
        if name is None:
            unrecognised.append(key)
        else:
            names[key] = BOTTOM_UP_PREFIX + name
    if unrecognised:
        raise ValueError(
            f"{len(unrecognised)} keys are not torchvision {arch} weights: " + ", ".join(unrecognised)
        )
    return names


def convert_torchvision(state_dict: Mapping[str, torch.Tensor], arch: str) -> dict:
    """A torchvision state dict as a Detectron2 checkpoint (the ``.pkl`` layout of its model zoo)."""
    names = rename_torchvision(state_dict.keys(), arch)
    model: Dict[str, np.ndarray] = {
        names[key]: value.detach().cpu().numpy() for key, value in state_dict.items() if key in names
    }
    return {"model": model, "__author__": "torchvision", "matching_heuristics": False}
