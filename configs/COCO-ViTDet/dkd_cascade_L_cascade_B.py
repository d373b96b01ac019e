"""DKD on per-ROI class logits with mdistiller's detection settings (alpha 1, beta 0.25, T 1), as
dkd_mask_R101_R50.yaml.
Cascade Mask R-CNN ViT-L teacher -> Cascade Mask R-CNN ViT-B student (pair_cascade_L_cascade_B.py).

    python tools/lazyconfig_train_net.py --config-file configs/COCO-ViTDet/dkd_cascade_L_cascade_B.py --num-gpus 8
"""
from detectron2.config import LazyCall as L

from topkd_det.detection import build_distill_loss

from .pair_cascade_L_cascade_B import dataloader, lr_multiplier, model, optimizer, train

model.distill_loss = L(build_distill_loss)(
    options=dict(method="dkd", dkd=dict(alpha=1.0, beta=0.25, temperature=1.0, weight=1.0)),
    num_classes="${..roi_heads.num_classes}",
)
train.output_dir = "output/coco/dkd_cascade_L_cascade_B"
