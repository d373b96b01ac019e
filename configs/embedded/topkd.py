"""TopKD on the embedded benchmark as a LazyConfig: the twin of topkd.yaml (Base-Tiny-RCNN-FPN.yaml and
Base-Student.yaml), with the same MobileNetV2 (width 0.5)-FPN student from scratch, teacher, data and
schedule; it trains offline on the CPU on the synthetic shapes (tools/make_synthetic_coco.py) with the
teacher `make demo` trains.

    python tools/lazyconfig_train_net.py --config-file configs/embedded/topkd.py
"""
import detectron2.data.transforms as T
from detectron2.config import LazyCall as L
from detectron2.config import LazyConfig
from detectron2.layers import ShapeSpec
from detectron2.solver import WarmupParamScheduler
from fvcore.common.param_scheduler import MultiStepParamScheduler

from topkd_det.detection import DistillRCNN, build_distill_loss, build_teacher
from topkd_det.detection.backbones import MobileNetV2
from topkd_det.detection.teacher import model_zoo_config_file

from ..common.models.faster_rcnn_fpn import model

# Small FPN, box head, ROI and proposal counts for 2 CPU cores and 96 px images; BN, from scratch.
model.backbone.bottom_up = L(MobileNetV2)(width_mult=0.5, norm="BN", out_features=["m2", "m3", "m4", "m5"],
                                          freeze_at=0)
model.backbone.out_channels = 64
model.proposal_generator.head.in_channels = 64
model.proposal_generator.anchor_generator.sizes = [[16], [32], [64], [128], [256]]
model.proposal_generator.pre_nms_topk = (300, 300)
model.proposal_generator.post_nms_topk = (150, 100)
model.roi_heads.num_classes = 24
model.roi_heads.batch_size_per_image = 64
model.roi_heads.box_head.input_shape = ShapeSpec(channels=64, height=7, width=7)
model.roi_heads.box_head.fc_dims = [256, 256]
model.roi_heads.box_predictor.input_shape = ShapeSpec(channels=256)
model.pixel_mean = [123.675, 116.28, 103.53]
model.pixel_std = [58.395, 57.12, 57.375]
model.input_format = "RGB"

model._target_ = DistillRCNN
model.teacher = L(build_teacher)(
    config="configs/embedded/teacher.yaml",
    weights="output/demo/teacher/model_final.pth",
    dtype="float32",
)
# The tree of MODEL.DISTILL in lower case: K valid for C+1 = 25 classes, the rest the defaults in docs/knobs.md.
model.distill_loss = L(build_distill_loss)(options=dict(method="topkd", topkd=dict(k=5)),
                                           num_classes="${..roi_heads.num_classes}")

dataloader = LazyConfig.load(model_zoo_config_file("common/data/coco.py"), "dataloader")
dataloader.train.dataset.names = "synthetic_shapes_train"
dataloader.train.mapper.augmentations = [
    L(T.ResizeShortestEdge)(short_edge_length=(96,), max_size=96, sample_style="choice"),
    L(T.RandomFlip)(horizontal=True),
]
dataloader.train.mapper.image_format = "RGB"
dataloader.train.mapper.use_instance_mask = False
dataloader.train.total_batch_size = 4
# Decoding four 96 px PNGs costs milliseconds; a worker process would only contend for the 2 cores.
dataloader.train.num_workers = 0
dataloader.test.dataset.names = "synthetic_shapes_val"
dataloader.test.mapper.augmentations = [L(T.ResizeShortestEdge)(short_edge_length=96, max_size=96)]
dataloader.test.num_workers = 0
dataloader.evaluator.output_dir = "${...train.output_dir}/inference"

optimizer = LazyConfig.load(model_zoo_config_file("common/optim.py"), "SGD")
optimizer.lr = 0.01
lr_multiplier = L(WarmupParamScheduler)(
    scheduler=L(MultiStepParamScheduler)(values=[1.0, 0.1, 0.01], milestones=[260, 330, 350]),
    warmup_length=50 / 350,
    warmup_method="linear",
    warmup_factor=0.001,
)

train = LazyConfig.load(model_zoo_config_file("common/train.py"), "train")
# Reproducible by default: Detectron2 seeds every RNG with it, and it seeds the training data order.
train.seed = 0
train.max_iter = 350
# The GPU when PyTorch sees one, else the CPU; the log says which (train.device=cpu stays on the CPU).
train.device = "auto"
train.output_dir = "output/demo/topkd_lazy"
train.checkpointer.period = 1000000
train.eval_period = 0
# From scratch with BN at batch 4, per-parameter gradient-norm clipping keeps training stable
# (SOLVER.CLIP_GRADIENTS of Base-Tiny-RCNN-FPN.yaml).
train.clip_gradients = dict(enabled=True, clip_type="norm", clip_value=5.0)
# The dataset check before training (docs/data_checks.md): the fraction of boxes Detectron2 may drop
# or misplace before the run stops, and whether a teacher trained on other class names may distill.
train.max_bad_box_fraction = 0.01
train.allow_other_teacher_classes = False
