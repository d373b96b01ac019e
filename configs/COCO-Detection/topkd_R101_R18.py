"""TopKD, R101 teacher -> R18 student, Faster R-CNN FPN on COCO with the DKD protocol: the
LazyConfig twin of topkd_R101_R18.yaml. The R18 weights are torchvision's, converted with
    python tools/convert_torchvision_to_d2.py --arch resnet resnet18-f37072fd.pth pretrained/R-18.pkl
so the student takes RGB images with ImageNet's mean and std.

    python tools/lazyconfig_train_net.py --config-file configs/COCO-Detection/topkd_R101_R18.py --num-gpus 8
"""
from detectron2.config import LazyCall as L
from detectron2.modeling.backbone import ResNet

from topkd_det.detection import DistillRCNN, build_distill_loss, build_teacher

from ..common.coco_dkd_protocol import dataloader, lr_multiplier, optimizer, train
from ..common.models.faster_rcnn_fpn import model

model.backbone.bottom_up.stages = L(ResNet.make_default_stages)(depth=18, norm="FrozenBN")
model.pixel_mean = [123.675, 116.28, 103.53]
model.pixel_std = [58.395, 57.12, 57.375]
model.input_format = "RGB"
dataloader.train.mapper.image_format = "RGB"

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

train.init_checkpoint = "pretrained/R-18.pkl"
train.output_dir = "output/coco/topkd_R101_R18_lazy"
