"""Embedded ViTDet teacher: the embedded ViTDet student (vitdet_student.py) with a larger ViT (6 blocks
of width 128, 4 heads, global attention in blocks 2 and 5) and a longer schedule, from scratch at
128 px on the synthetic shapes. vitdet_topkd.py distills it into the student. Train it first:

    python tools/lazyconfig_train_net.py --config-file configs/embedded/vitdet_teacher.py
"""
from functools import partial

from .vitdet_student import dataloader, lr_multiplier, model, optimizer, train
from detectron2.modeling.backbone.vit import get_vit_lr_decay_rate  # noqa: I100  (after vitdet_student's check)

model.backbone.net.update(embed_dim=128, depth=6, num_heads=4, window_block_indexes=[0, 1, 3, 4],
                          drop_path_rate=0.1)
optimizer.params.lr_factor_func = partial(get_vit_lr_decay_rate, num_layers=6, lr_decay_rate=0.7)
train.max_iter = 800
lr_multiplier.scheduler.milestones = [600, 750, 800]
lr_multiplier.warmup_length = 25 / 800
train.output_dir = "output/demo/vitdet_teacher"
