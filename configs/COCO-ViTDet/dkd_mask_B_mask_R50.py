"""DKD on per-ROI class logits with mdistiller's detection settings (alpha 1, beta 0.25, T 1), as
dkd_mask_R101_R50.yaml.
Mask R-CNN ViT-B teacher -> Mask R-CNN R50-FPN student (pair_mask_B_mask_R50.py).

    python tools/lazyconfig_train_net.py --config-file configs/COCO-ViTDet/dkd_mask_B_mask_R50.py --num-gpus 8
"""
from detectron2.config import LazyCall as L

from topkd_det.detection import build_distill_loss

from .pair_mask_B_mask_R50 import dataloader, lr_multiplier, model, optimizer, train

model.distill_loss = L(build_distill_loss)(
    options=dict(method="dkd", dkd=dict(alpha=1.0, beta=0.25, temperature=1.0, weight=1.0)),
    num_classes="${..roi_heads.num_classes}",
)
train.output_dir = "output/coco/dkd_mask_B_mask_R50"
