"""Faster R-CNN R50-FPN as a LazyConfig: Detectron2's own common Mask R-CNN FPN model (read as a file
from the installed Detectron2) without its mask head, the backbone frozen up to res2 as
MODEL.BACKBONE.FREEZE_AT 2 does. The other settings are Detectron2's defaults (MSRA R50, BGR)."""
from detectron2.config import LazyConfig

from topkd_det.detection.teacher import model_zoo_config_file

model = LazyConfig.load(model_zoo_config_file("common/models/mask_rcnn_fpn.py"), "model")
for key in ("mask_in_features", "mask_pooler", "mask_head"):
    model.roi_heads.pop(key)
model.backbone.bottom_up.freeze_at = 2
