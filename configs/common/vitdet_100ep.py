"""The training recipe of projects/ViTDet's ViT-B configs (configs/COCO/mask_rcnn_vitdet_b_100ep.py and
its Cascade twin) with its large-scale-jitter data loader (configs/common/coco_loader_lsj.py), built
from the installed official Detectron2's model-zoo configs, so no Detectron2 source tree is needed and
detectron2.model_zoo (which imports pkg_resources) is never imported. What differs from projects/ViTDet:
train.seed is fixed at 0 (this project's rule: a run is reproducible and --resume continues its data
order) and COCO evaluation results go under train.output_dir.

LSJ at 1024 px, batch 64, AMP with fp16 gradient compression in DDP, AdamW (LR 1e-4, weight decay 0.1,
none on norms and the position embedding) with layer-wise LR decay 0.7 over the 12 ViT-B blocks, the
MAE ImageNet-1k init, 100 epochs (184375 iterations) with LR steps at 163889 and 177546 after a
250-iteration warmup. A ViT-L student needs decay 0.8 over 24 blocks and its MAE weights (as
projects/ViTDet's *_l_100ep.py)."""
from functools import partial

import detectron2.data.transforms as T
from detectron2.config import LazyCall as L
from detectron2.config import LazyConfig
from detectron2.solver import WarmupParamScheduler
from fvcore.common.param_scheduler import MultiStepParamScheduler

from topkd_det.detection.teacher import model_zoo_config_file
from topkd_det.detection.vitdet import require_vit_backbone

require_vit_backbone("this ViTDet config")
from detectron2.modeling.backbone.vit import get_vit_lr_decay_rate  # noqa: E402  (after the check)

_IMAGE_SIZE = 1024
dataloader = LazyConfig.load(model_zoo_config_file("common/data/coco.py"), "dataloader")
dataloader.train.mapper.augmentations = [
    L(T.RandomFlip)(horizontal=True),  # flip first
    L(T.ResizeScale)(min_scale=0.1, max_scale=2.0, target_height=_IMAGE_SIZE, target_width=_IMAGE_SIZE),
    L(T.FixedSizeCrop)(crop_size=(_IMAGE_SIZE, _IMAGE_SIZE), pad=False),
]
dataloader.train.mapper.image_format = "RGB"
dataloader.train.total_batch_size = 64
# The crop cuts objects: their boxes are recomputed from their masks.
dataloader.train.mapper.recompute_boxes = True
dataloader.test.mapper.augmentations = [L(T.ResizeShortestEdge)(short_edge_length=_IMAGE_SIZE, max_size=_IMAGE_SIZE)]
dataloader.evaluator.output_dir = "${...train.output_dir}/inference"

train = LazyConfig.load(model_zoo_config_file("common/train.py"), "train")
train.amp.enabled = True
train.ddp.fp16_compression = True
train.init_checkpoint = "detectron2://ImageNetPretrained/MAE/mae_pretrain_vit_base.pth?matching_heuristics=True"
# 100 ep = 184375 iters * 64 images/iter / 118000 images/ep
train.max_iter = 184375
# Reproducible by default: Detectron2 seeds every RNG with it, and it seeds the training data order.
train.seed = 0

lr_multiplier = L(WarmupParamScheduler)(
    scheduler=L(MultiStepParamScheduler)(values=[1.0, 0.1, 0.01], milestones=[163889, 177546],
                                         num_updates=train.max_iter),
    warmup_length=250 / train.max_iter,
    warmup_factor=0.001,
)

optimizer = LazyConfig.load(model_zoo_config_file("common/optim.py"), "AdamW")
optimizer.params.lr_factor_func = partial(get_vit_lr_decay_rate, num_layers=12, lr_decay_rate=0.7)
optimizer.params.overrides = {"pos_embed": {"weight_decay": 0.0}}
