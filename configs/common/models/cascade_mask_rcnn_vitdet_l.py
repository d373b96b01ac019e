"""Cascade Mask R-CNN ViTDet, ViT-L: the Cascade ViT-B model with the ViT-L backbone
(projects/ViTDet's cascade_mask_rcnn_vitdet_l_100ep.py)."""
from .cascade_mask_rcnn_vitdet_b import model
from .mask_rcnn_vitdet_l import model as _large

model.backbone.net = _large.backbone.net
