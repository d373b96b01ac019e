"""Mask R-CNN ViTDet, ViT-L: the ViT-B model with the ViT-L backbone of projects/ViTDet's
mask_rcnn_vitdet_l_100ep.py (24 blocks of width 1024, 16 heads, drop path 0.4, global attention in
blocks 5, 11, 17 and 23)."""
from .mask_rcnn_vitdet_b import model

model.backbone.net.embed_dim = 1024
model.backbone.net.depth = 24
model.backbone.net.num_heads = 16
model.backbone.net.drop_path_rate = 0.4
model.backbone.net.window_block_indexes = (
    list(range(0, 5)) + list(range(6, 11)) + list(range(12, 17)) + list(range(18, 23))
)
