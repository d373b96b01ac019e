"""Mask R-CNN ViTDet, ViT-B: the installed official Detectron2's own model-zoo config
(common/models/mask_rcnn_vitdet.py, the model of projects/ViTDet's mask_rcnn_vitdet_b_100ep.py), read as
a file. ViT-B/16 at 1024 px (padded to a 1024 square), windowed attention with 4 global blocks, a simple
feature pyramid, LN in the 4conv1fc box head and the mask head, RGB with ImageNet's mean and std.
On Detectron2 0.6, which has no ViT backbone, it is refused in one line naming the official build."""
from detectron2.config import LazyConfig

from topkd_det.detection.teacher import model_zoo_config_file
from topkd_det.detection.vitdet import require_vit_backbone

require_vit_backbone("this ViTDet config")
model = LazyConfig.load(model_zoo_config_file("common/models/mask_rcnn_vitdet.py"), "model")
