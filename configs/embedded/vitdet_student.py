"""Embedded ViTDet student: a 3-block plain ViT (width 64, patch 16) with ViTDet's simple feature
pyramid, LN heads and windowed attention, a Faster R-CNN from scratch at 128 px on the synthetic shapes,
trained alone with ViTDet's recipe at CPU size. It is the baseline of vitdet_topkd.py, and trains
offline on the CPU in a few minutes (the synthetic data: tools/make_synthetic_coco.py):

    python tools/lazyconfig_train_net.py --config-file configs/embedded/vitdet_student.py

Where it differs from projects/ViTDet (docs/vitdet.md): no mask head (the synthetic shapes have boxes
only); 3 blocks of width 64 instead of ViT-B's 12 of 768, windows of 4x4 patches with the last block
global; a 64-channel pyramid and a 2conv1fc box head (ViT-B: 256 channels, 4conv1fc); random init
instead of MAE; scale jitter 0.8-1.25 instead of LSJ's 0.1-2.0 (the 20-45 px shapes would vanish at
0.1); batch 4 and a 400-iteration schedule; the CPU, so no AMP (Detectron2's AMPTrainer needs CUDA).
"""
from functools import partial

import detectron2.data.transforms as T
from detectron2.config import LazyCall as L
from detectron2.config import LazyConfig
from detectron2.layers import ShapeSpec
from detectron2.solver import WarmupParamScheduler
from fvcore.common.param_scheduler import MultiStepParamScheduler

from topkd_det.detection.teacher import model_zoo_config_file

from ..common.models.mask_rcnn_vitdet_b import model
from detectron2.modeling.backbone.vit import get_vit_lr_decay_rate  # noqa: E402,I100  (after its check)

for key in ("mask_in_features", "mask_pooler", "mask_head"):
    model.roi_heads.pop(key)
_SIZE = 128
model.backbone.net.update(img_size=_SIZE, pretrain_img_size=_SIZE, embed_dim=64, depth=3, num_heads=2,
                          window_size=4, window_block_indexes=[0, 1], drop_path_rate=0.0)
model.backbone.out_channels = 64
model.backbone.square_pad = _SIZE
model.proposal_generator.head.in_channels = 64
model.proposal_generator.anchor_generator.sizes = [[16], [32], [64], [128], [256]]
model.proposal_generator.pre_nms_topk = (1000, 500)
model.proposal_generator.post_nms_topk = (300, 100)
model.roi_heads.num_classes = 24
model.roi_heads.batch_size_per_image = 64
model.roi_heads.box_head.input_shape = ShapeSpec(channels=64, height=7, width=7)
model.roi_heads.box_head.conv_dims = [64, 64]
model.roi_heads.box_head.fc_dims = [256]
model.roi_heads.box_predictor.input_shape = ShapeSpec(channels=256)

dataloader = LazyConfig.load(model_zoo_config_file("common/data/coco.py"), "dataloader")
dataloader.train.dataset.names = "synthetic_shapes_train"
dataloader.train.mapper.augmentations = [
    L(T.RandomFlip)(horizontal=True),  # flip first, as ViTDet's LSJ
    L(T.ResizeScale)(min_scale=0.8, max_scale=1.25, target_height=_SIZE, target_width=_SIZE),
    L(T.FixedSizeCrop)(crop_size=(_SIZE, _SIZE), pad=False),
]
dataloader.train.mapper.image_format = "RGB"
dataloader.train.mapper.use_instance_mask = False
dataloader.train.total_batch_size = 4
# Decoding four 128 px PNGs costs milliseconds; a worker process would only contend for the 2 cores.
dataloader.train.num_workers = 0
dataloader.test.dataset.names = "synthetic_shapes_val"
dataloader.test.mapper.augmentations = [L(T.ResizeShortestEdge)(short_edge_length=_SIZE, max_size=_SIZE)]
dataloader.test.num_workers = 0
dataloader.evaluator.output_dir = "${...train.output_dir}/inference"

# ViTDet's optimizer: AdamW, no weight decay on norms and the position embedding, layer-wise LR decay.
optimizer = LazyConfig.load(model_zoo_config_file("common/optim.py"), "AdamW")
optimizer.lr = 4e-4
optimizer.params.lr_factor_func = partial(get_vit_lr_decay_rate, num_layers=3, lr_decay_rate=0.7)
optimizer.params.overrides = {"pos_embed": {"weight_decay": 0.0}}

train = LazyConfig.load(model_zoo_config_file("common/train.py"), "train")
# Reproducible by default: Detectron2 seeds every RNG with it, and it seeds the training data order.
train.seed = 0
train.max_iter = 400
train.device = "cpu"
train.amp.enabled = False
# As ViTDet: fp16 gradients between processes (with several; one process has no DDP).
train.ddp.fp16_compression = True
train.output_dir = "output/demo/vitdet_student"
train.checkpointer.period = 1000000
train.eval_period = 0

# In fractions of train.max_iter (a shorter run compresses the schedule), as ViTDet's num_updates.
lr_multiplier = L(WarmupParamScheduler)(
    scheduler=L(MultiStepParamScheduler)(values=[1.0, 0.1, 0.01], milestones=[300, 375, 400]),
    warmup_length=25 / 400,
    warmup_factor=0.001,
)
