"""COCO 2017 with the DKD detection protocol (Zhao et al. 2022, as mdistiller), as a LazyConfig: the
dataloader, optimizer, schedule and train settings of Base-RCNN-FPN-1x-DKD-protocol.yaml. Batch 8,
SGD with LR 0.01, 180k iterations with steps at 120k and 160k after a 1000-iteration linear warmup,
multi-scale training (shorter side 640-800), COCO evaluation at the end."""
from detectron2.config import LazyCall as L
from detectron2.config import LazyConfig
from detectron2.solver import WarmupParamScheduler
from fvcore.common.param_scheduler import MultiStepParamScheduler

from topkd_det.detection.teacher import model_zoo_config_file

dataloader = LazyConfig.load(model_zoo_config_file("common/data/coco.py"), "dataloader")
dataloader.train.total_batch_size = 8
dataloader.evaluator.output_dir = "${...train.output_dir}/inference"

optimizer = LazyConfig.load(model_zoo_config_file("common/optim.py"), "SGD")
optimizer.lr = 0.01

lr_multiplier = L(WarmupParamScheduler)(
    scheduler=L(MultiStepParamScheduler)(values=[1.0, 0.1, 0.01], milestones=[120000, 160000, 180000]),
    warmup_length=1000 / 180000,
    warmup_method="linear",
    warmup_factor=0.001,
)

train = LazyConfig.load(model_zoo_config_file("common/train.py"), "train")
# Reproducible by default: Detectron2 seeds every RNG with it, and it seeds the training data order.
train.seed = 0
train.max_iter = 180000
train.checkpointer.period = 10000
train.eval_period = 0
# The dataset check before training (docs/data_checks.md): the fraction of boxes Detectron2 may drop
# or misplace before the run stops, and whether a teacher trained on other class names may distill.
train.max_bad_box_fraction = 0.01
train.allow_other_teacher_classes = False
