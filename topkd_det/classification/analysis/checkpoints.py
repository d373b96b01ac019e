"""Rebuilding a trained model, and the way it reads images, from a tools/train_cls.py checkpoint."""
import os
from typing import Callable, NamedTuple

import torch
from fvcore.common.config import CfgNode as CN
from torch import nn

from ..checkpoint import WeightsError, extract_state_dict, load_file, load_weights
from ..config import get_cls_cfg, input_size, num_classes
from ..data import CIFAR100_MEAN, CIFAR100_STD, FASHION_MNIST_MEAN, FASHION_MNIST_STD, IMAGENET_MEAN, IMAGENET_STD
from ..models import build_model
from . import AnalysisError

_DATASET_STATS = {"cifar100": (CIFAR100_MEAN, CIFAR100_STD), "fashion_mnist": (FASHION_MNIST_MEAN, FASHION_MNIST_STD),
                  "imagenet": (IMAGENET_MEAN, IMAGENET_STD)}


class InputSpec(NamedTuple):
    """How a model wants its images: channels, square size, normalisation."""
    channels: int
    size: int
    mean: tuple
    std: tuple


class Trained(NamedTuple):
    model: nn.Module
    cfg: CN
    spec: InputSpec


def input_spec(cfg: CN) -> InputSpec:
    if cfg.DATASET.TRANSFORM == "randaug":
        mean, std = IMAGENET_MEAN, IMAGENET_STD
    else:
        mean, std = _DATASET_STATS[cfg.DATASET.NAME]
    return InputSpec(len(mean), input_size(cfg), tuple(mean), tuple(std))


def _stored_config(state, path: str) -> CN:
    """The config a train_cls checkpoint was trained with (stored in it as a YAML dump)."""
    if not isinstance(state, dict) or "config" not in state or "model" not in state:
        raise AnalysisError(f"{path!r} is not a checkpoint written by tools/train_cls.py (it has no 'config' and "
                            "'model' entries); pass OUTPUT_DIR/last.pth of a training run")
    cfg = get_cls_cfg()
    try:
        cfg.merge_from_other_cfg(CN.load_cfg(state["config"]))
    except (KeyError, AssertionError, ValueError) as err:
        raise AnalysisError(f"{path!r}: its stored config does not fit this version's keys ({err})") from None
    return cfg


def load_trained(path: str) -> Trained:
    """The model of a train_cls checkpoint (student weights, eval mode) with its config and input spec."""
    state = _load(path)
    cfg = _stored_config(state, path)
    model = build_model(cfg.MODEL.STUDENT, num_classes(cfg))
    try:
        model.load_state_dict(extract_state_dict(state["model"], path))
    except RuntimeError as err:
        raise AnalysisError(f"{path!r}: weights do not fit {cfg.MODEL.STUDENT!r}: {str(err).splitlines()[0]}") from None
    return Trained(model.eval(), cfg, input_spec(cfg))


def load_teacher(cfg: CN) -> nn.Module:
    """The teacher named by a distillation run's config (MODEL.TEACHER, MODEL.TEACHER_WEIGHTS), frozen."""
    if cfg.DISTILL.METHOD == "none" or not cfg.MODEL.TEACHER:
        raise AnalysisError("the checkpoint was trained without a teacher; give the teacher's checkpoint with --teacher")
    teacher = build_model(cfg.MODEL.TEACHER, num_classes(cfg))
    try:
        load_weights(teacher, cfg.MODEL.TEACHER_WEIGHTS, f"teacher {cfg.MODEL.TEACHER!r}")
    except WeightsError as err:
        raise AnalysisError(str(err)) from None
    return teacher.eval()


def _load(path: str):
    if not os.path.isfile(path):
        raise AnalysisError(f"no such checkpoint {path!r}")
    try:
        return load_file(path)
    except WeightsError as err:
        raise AnalysisError(str(err)) from None


def preparer(spec: InputSpec) -> Callable[[torch.Tensor], torch.Tensor]:
    """uint8 images (N, C, H, W), any C in {1, 3} and any size -> the float batch ``spec`` describes:
    grey<->RGB (ITU-R 601 luma), bilinear resize, the model's mean/std."""
    mean = torch.tensor(spec.mean).view(1, -1, 1, 1)
    std = torch.tensor(spec.std).view(1, -1, 1, 1)
    luma = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)

    def prepare(images: torch.Tensor) -> torch.Tensor:
        x = images.float().div(255)
        if x.shape[1] == 3 and spec.channels == 1:
            x = (x * luma).sum(1, keepdim=True)
        elif x.shape[1] == 1 and spec.channels == 3:
            x = x.expand(-1, 3, -1, -1)
        if x.shape[-1] != spec.size or x.shape[-2] != spec.size:
            x = torch.nn.functional.interpolate(x, size=(spec.size, spec.size), mode="bilinear", align_corners=False)
        return (x - mean) / std

    return prepare
