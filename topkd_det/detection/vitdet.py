"""ViTDet (plain-ViT backbones with a simple feature pyramid, ``projects/ViTDet``) in this project's
LazyConfig files: the one check that the installed Detectron2 has the ViT backbone. Detectron2 0.6
predates ViTDet; its ``detectron2.modeling`` has no ``ViT``, ``SimpleFeaturePyramid`` or
``get_vit_lr_decay_rate``, and its model zoo no ``common/models/mask_rcnn_vitdet.py``.

Everything else ViTDet needs is in the installed official Detectron2 itself (``detectron2.modeling``
and its model zoo's ``common/`` configs); the few lines of ``projects/ViTDet/configs`` that live only
in Detectron2's source tree (the LSJ data loader, the schedule and the layer-wise LR decay) are
carried by ``configs/common/vitdet_100ep.py``, so no Detectron2 checkout has to be on a path.
"""
import os

from ..config_io import ConfigError

DOCS = "docs/vitdet.md"


def vit_backbone_available() -> bool:
    """Whether the installed Detectron2 has ViTDet's backbone and LR-decay rule (main does, 0.6 not)."""
    try:
        from detectron2.modeling import SimpleFeaturePyramid, ViT  # noqa: F401
        from detectron2.modeling.backbone.vit import get_vit_lr_decay_rate  # noqa: F401
    except ImportError:
        return False
    return True


def require_vit_backbone(what: str = "ViTDet") -> None:
    """Raise ``ConfigError`` (one line naming the official build) unless Detectron2 has the ViT backbone."""
    if not vit_backbone_available():
        import detectron2

        raise ConfigError(
            f"{what} needs the official Detectron2 (main, built from source), whose detectron2.modeling has the ViT "
            f"backbone; the installed Detectron2 ({os.path.dirname(detectron2.__file__)}) has none (Detectron2 0.6 "
            "predates ViTDet): python tools/install_detectron2.py --source <Detectron2 source archive or tree> "
            f"[--target DIR, then PYTHONPATH=DIR] ({DOCS})") from None
