"""TopKD, R101 teacher -> R50 student, Faster R-CNN FPN on COCO with the DKD protocol: the
LazyConfig twin of topkd_R101_R50.yaml (same student, teacher, loss and schedule).

    python tools/lazyconfig_train_net.py --config-file configs/COCO-Detection/topkd_R101_R50.py --num-gpus 8
"""
from detectron2.config import LazyCall as L

from topkd_det.detection import DistillRCNN, build_distill_loss, build_teacher

from ..common.coco_dkd_protocol import dataloader, lr_multiplier, optimizer, train
from ..common.models.faster_rcnn_fpn import model

model._target_ = DistillRCNN
model.teacher = L(build_teacher)(
    config="zoo:COCO-Detection/faster_rcnn_R_101_FPN_3x.yaml",
    weights="detectron2://COCO-Detection/faster_rcnn_R_101_FPN_3x/137851257/model_final_f6e8b1.pkl",
    dtype="float32",
)
# The tree of MODEL.DISTILL in lower case; K, alpha and beta follow the paper (Table 5/6), the other
# knobs are the defaults in docs/knobs.md.
model.distill_loss = L(build_distill_loss)(
    options=dict(method="topkd", topkd=dict(k=10, alpha=3.0, beta=1.0)),
    num_classes="${..roi_heads.num_classes}",
)

train.init_checkpoint = "detectron2://ImageNetPretrained/MSRA/R-50.pkl"
train.output_dir = "output/coco/topkd_R101_R50_lazy"
