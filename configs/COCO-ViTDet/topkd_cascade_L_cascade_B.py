"""TopKD on per-ROI class logits (C+1 = 81 with background); K, alpha and beta as the Faster R-CNN
pairs (paper Table 5/6), the other knobs the defaults, as topkd_mask_R101_R50.yaml.
Cascade Mask R-CNN ViT-L teacher -> Cascade Mask R-CNN ViT-B student (pair_cascade_L_cascade_B.py).

    python tools/lazyconfig_train_net.py --config-file configs/COCO-ViTDet/topkd_cascade_L_cascade_B.py --num-gpus 8
"""
from detectron2.config import LazyCall as L

from topkd_det.detection import build_distill_loss

from .pair_cascade_L_cascade_B import dataloader, lr_multiplier, model, optimizer, train

model.distill_loss = L(build_distill_loss)(
    options=dict(method="topkd", topkd=dict(k=10, alpha=3.0, beta=1.0)),
    num_classes="${..roi_heads.num_classes}",
)
train.output_dir = "output/coco/topkd_cascade_L_cascade_B"
