"""ViTDet pair: Mask R-CNN ViT-B teacher -> Mask R-CNN R50-FPN student, on COCO 2017.

Teacher: the ViTDet model zoo's Mask R-CNN ViT-B, 100 epochs (51.6 box AP): RGB, ImageNet mean and std,
trained at 1024 px and padded to a 1024 square. Student: Detectron2's own Mask R-CNN R50-FPN
(common/models/mask_rcnn_fpn.py: MSRA ImageNet init, BGR with Caffe normalisation, frozen up to res2)
on this project's DKD detection protocol (configs/common/coco_dkd_protocol.py: batch 8, SGD, 180k
iterations, shorter side 640-800 up to 1333 px). The two differ in channel order, normalisation, size
and padding: the teacher takes the student's images with their channels flipped, resized as its own
test-time ResizeShortestEdge(1024, 1024) would resize them (model.teacher.input_size), normalised and
padded its own way, and scores the student's proposal boxes scaled by the same factors. Without the
resize, a 1333 px image would not fit its 1024 square (refused when it first comes).
The kd_/dkd_/topkd_ files add the distillation loss. Run, e.g.:

    python tools/lazyconfig_train_net.py --config-file configs/COCO-ViTDet/topkd_mask_B_mask_R50.py --num-gpus 8
"""
from detectron2.config import LazyCall as L
from detectron2.config import LazyConfig

from topkd_det.detection import DistillRCNN, build_teacher
from topkd_det.detection.teacher import model_zoo_config_file

from ..common.coco_dkd_protocol import dataloader, lr_multiplier, optimizer, train
from ..common.models.mask_rcnn_vitdet_b import model as _teacher_model

model = LazyConfig.load(model_zoo_config_file("common/models/mask_rcnn_fpn.py"), "model")
model.backbone.bottom_up.freeze_at = 2  # as MODEL.BACKBONE.FREEZE_AT 2, Detectron2's default
train.init_checkpoint = "detectron2://ImageNetPretrained/MSRA/R-50.pkl"

model._target_ = DistillRCNN
model.teacher = L(build_teacher)(
    config=_teacher_model,
    weights="detectron2://ViTDet/COCO/mask_rcnn_vitdet_b/f325346929/model_final_61ccd1.pkl",
    dtype="float32",
    input_size=(1024, 1024),
)
