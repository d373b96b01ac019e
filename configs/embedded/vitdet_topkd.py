"""TopKD on the embedded ViTDet pair: the teacher of vitdet_teacher.py (6 ViT blocks of width 128)
distilled into the student of vitdet_student.py (3 blocks of width 64), on the same 128 px images,
with the student's recipe (AdamW, layer-wise LR decay over the student's blocks only: the teacher is
not a submodule and never reaches the optimizer). Train the teacher first, then:

    python tools/lazyconfig_train_net.py --config-file configs/embedded/vitdet_topkd.py
"""
from detectron2.config import LazyCall as L

from topkd_det.detection import DistillRCNN, build_distill_loss, build_teacher

from .vitdet_student import dataloader, lr_multiplier, model, optimizer, train
from .vitdet_teacher import model as _teacher_model

model._target_ = DistillRCNN
model.teacher = L(build_teacher)(
    config=_teacher_model,
    weights="output/demo/vitdet_teacher/model_final.pth",
    dtype="float32",
)
# The tree of MODEL.DISTILL in lower case: K valid for C+1 = 25 classes, the other knobs the defaults.
model.distill_loss = L(build_distill_loss)(options=dict(method="topkd", topkd=dict(k=5)),
                                           num_classes="${..roi_heads.num_classes}")
train.output_dir = "output/demo/vitdet_topkd"
