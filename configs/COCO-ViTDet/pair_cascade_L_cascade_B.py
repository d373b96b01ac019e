"""ViTDet pair: Cascade Mask R-CNN ViT-L teacher -> Cascade Mask R-CNN ViT-B student, on COCO 2017.

Teacher: the ViTDet model zoo's Cascade Mask R-CNN ViT-L, 100 epochs (57.6 box AP). Each of its three
heads scores the ROIs of the student's stage of the same IoU (0.5, 0.6, 0.7), and every stage is
distilled (loss_<term>_stage<k>). Student: Cascade Mask R-CNN ViT-B from its MAE init on
projects/ViTDet's 100-epoch recipe (configs/common/vitdet_100ep.py; the model zoo's ViT-B trained that
way alone reaches 54.0 box AP). Both take the same RGB images at 1024 px padded to a 1024 square.
The kd_/dkd_/topkd_ files add the distillation loss. Run, e.g.:

    python tools/lazyconfig_train_net.py --config-file configs/COCO-ViTDet/topkd_cascade_L_cascade_B.py --num-gpus 8
"""
from detectron2.config import LazyCall as L

from topkd_det.detection import DistillRCNN, build_teacher

from ..common.models.cascade_mask_rcnn_vitdet_b import model
from ..common.models.cascade_mask_rcnn_vitdet_l import model as _teacher_model
from ..common.vitdet_100ep import dataloader, lr_multiplier, optimizer, train

model._target_ = DistillRCNN
model.teacher = L(build_teacher)(
    config=_teacher_model,
    weights="detectron2://ViTDet/COCO/cascade_mask_rcnn_vitdet_l/f328021305/model_final_1a9f28.pkl",
    dtype="float32",
)
