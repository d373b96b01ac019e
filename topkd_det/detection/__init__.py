"""Detectron2 extension: importing it registers the ``DistillRCNN`` meta-architecture and the
MobileNetV2-FPN backbone; ``add_topkd_config`` adds their config keys. ``build_teacher`` and
``build_distill_loss`` are DistillRCNN's ``teacher`` and ``distill_loss`` in LazyConfig files."""
from .backbones import build_mobilenetv2_fpn_backbone
from .config import add_topkd_config
from .meta_arch import DistillRCNN, build_distill_loss
from .teacher import build_teacher

__all__ = ["add_topkd_config", "DistillRCNN", "build_distill_loss", "build_teacher", "build_mobilenetv2_fpn_backbone"]
