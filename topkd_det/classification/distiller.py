"""Student + frozen teacher + the core loss, as one module the trainer calls once per batch."""
from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..core import build_loss
from .checkpoint import load_weights
from .config import input_size, is_distillation, num_classes
from .models import build_model


class Distiller(nn.Module):
    """``forward(x, y, progress)`` returns ``(student_logits, loss_dict)``; sum the dict to train.

    The teacher (None in vanilla training) stays in eval mode with no gradients whatever ``train()``
    is called with, so its BatchNorm statistics and dropout never change. ``student`` may be a
    DistributedDataParallel wrapper: only the student's gradients are synchronised.
    """

    def __init__(self, student: nn.Module, teacher: Optional[nn.Module], loss: nn.Module):
        super().__init__()
        self.student = student
        self.teacher = teacher
        self.loss = loss
        if teacher is not None:
            teacher.requires_grad_(False)
            teacher.eval()

    def train(self, mode: bool = True) -> "Distiller":
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()
        return self

    def forward(self, x: torch.Tensor, y: torch.Tensor,
                progress: float) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        logits = self.student(x)
        if self.teacher is None:
            return logits, self.loss(logits, logits.detach(), y, progress=progress)
        with torch.no_grad():
            teacher_logits = self.teacher(x)
        return logits, self.loss(logits, teacher_logits, y, progress=progress)


class ResizedInput(nn.Module):
    """``model`` run on its input resized (bilinear) to ``size`` x ``size``: a teacher trained at a lower
    resolution than its student (the ViT setting's 32 px CNN beside 224 px students)."""

    def __init__(self, model: nn.Module, size: int):
        super().__init__()
        self.model, self.size = model, size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False))


def build_student(cfg) -> nn.Module:
    student = build_model(cfg.MODEL.STUDENT, num_classes(cfg))
    if cfg.MODEL.WEIGHTS:
        load_weights(student, cfg.MODEL.WEIGHTS, f"student {cfg.MODEL.STUDENT!r} (MODEL.WEIGHTS)")
    return student


def build_teacher(cfg) -> Optional[nn.Module]:
    """The trained teacher of a distillation config, frozen; None for vanilla training."""
    if not is_distillation(cfg):
        return None
    # Built without drawing from the global RNG (its initial weights are overwritten anyway), so that
    # the student's training draws are those of the same seed without a teacher: comparisons pair on it.
    with torch.random.fork_rng(devices=[]):
        teacher = build_model(cfg.MODEL.TEACHER, num_classes(cfg))
    load_weights(teacher, cfg.MODEL.TEACHER_WEIGHTS, f"teacher {cfg.MODEL.TEACHER!r} (MODEL.TEACHER_WEIGHTS)")
    size = cfg.MODEL.TEACHER_INPUT_SIZE
    if size and size != input_size(cfg):
        teacher = ResizedInput(teacher, size)
    return teacher.requires_grad_(False).eval()


def build_distill_loss(cfg) -> nn.Module:
    return build_loss(cfg.DISTILL, num_classes=num_classes(cfg))
