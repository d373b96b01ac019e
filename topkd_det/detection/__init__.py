"""Detectron2 extension: importing it registers the ``DistillRCNN`` meta-architecture and the
MobileNetV2-FPN backbone; ``add_topkd_config`` adds their config keys."""
from .backbones import build_mobilenetv2_fpn_backbone
from .config import add_topkd_config
from .meta_arch import DistillRCNN

__all__ = ["add_topkd_config", "DistillRCNN", "build_mobilenetv2_fpn_backbone"]
