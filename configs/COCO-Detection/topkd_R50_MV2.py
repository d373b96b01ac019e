"""TopKD, R50 teacher -> MobileNetV2 student, Faster R-CNN FPN on COCO with the DKD protocol: the
LazyConfig twin of topkd_R50_MV2.yaml. The MobileNetV2 weights are torchvision's, converted with
    python tools/convert_torchvision_to_d2.py --arch mobilenetv2 mobilenet_v2-b0353104.pth pretrained/MV2.pkl
so the student takes RGB images with ImageNet's mean and std.

    python tools/lazyconfig_train_net.py --config-file configs/COCO-Detection/topkd_R50_MV2.py --num-gpus 8
"""
from detectron2.config import LazyCall as L

from topkd_det.detection import DistillRCNN, build_distill_loss, build_teacher
from topkd_det.detection.backbones import MobileNetV2

from ..common.coco_dkd_protocol import dataloader, lr_multiplier, optimizer, train
from ..common.models.faster_rcnn_fpn import model

model.backbone.bottom_up = L(MobileNetV2)(width_mult=1.0, norm="FrozenBN", out_features=["m2", "m3", "m4", "m5"],
                                          freeze_at=2)
model.pixel_mean = [123.675, 116.28, 103.53]
model.pixel_std = [58.395, 57.12, 57.375]
model.input_format = "RGB"
dataloader.train.mapper.image_format = "RGB"

model._target_ = DistillRCNN
model.teacher = L(build_teacher)(
    config="zoo:COCO-Detection/faster_rcnn_R_50_FPN_3x.yaml",
    weights="detectron2://COCO-Detection/faster_rcnn_R_50_FPN_3x/137849458/model_final_280758.pkl",
    dtype="float32",
)
# The tree of MODEL.DISTILL in lower case; K, alpha and beta follow the paper (Table 5/6), the other
# knobs are the defaults in docs/knobs.md.
model.distill_loss = L(build_distill_loss)(
    options=dict(method="topkd", topkd=dict(k=10, alpha=3.0, beta=1.0)),
    num_classes="${..roi_heads.num_classes}",
)

train.init_checkpoint = "pretrained/MV2.pkl"
train.output_dir = "output/coco/topkd_R50_MV2_lazy"
