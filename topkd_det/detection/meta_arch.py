"""``DistillRCNN``: a Faster R-CNN FPN student trained beside a frozen teacher.

Per training step the student runs as usual; its ROI heads' sampled proposals (foreground and
background, ``ROI_HEADS.BATCH_SIZE_PER_IMAGE`` per image) are then scored by the teacher's box head,
so teacher and student class logits line up row by row, and the core loss is applied to them with
the matched ``gt_classes`` (background = class C) as labels. The student's logits are the ones its
own box predictor produced for its detection loss: nothing of the student runs twice. Inference is
the student alone.
"""
from typing import Dict, List

import torch
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, GeneralizedRCNN
from detectron2.modeling.roi_heads import StandardROIHeads
from detectron2.utils.events import get_event_storage

from ..core import DistillationLoss, build_loss
from .teacher import FrozenTeacher


@META_ARCH_REGISTRY.register()
class DistillRCNN(GeneralizedRCNN):
    @configurable
    def __init__(self, *, teacher: FrozenTeacher, distill_loss: DistillationLoss, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(self.roi_heads, StandardROIHeads) or self.roi_heads.mask_on or self.roi_heads.keypoint_on:
            raise ValueError("DistillRCNN distills a Faster R-CNN: MODEL.ROI_HEADS.NAME must be StandardROIHeads "
                             "without mask or keypoint heads")
        if self.roi_heads.train_on_pred_boxes:
            raise ValueError("MODEL.ROI_BOX_HEAD.TRAIN_ON_PRED_BOXES is not supported by DistillRCNN")
        if teacher.num_classes != self.roi_heads.num_classes:
            raise ValueError(
                f"teacher has {teacher.num_classes} classes (its ROI_HEADS.NUM_CLASSES) but the student has "
                f"{self.roi_heads.num_classes}; distillation needs the same label space"
            )
        self.teacher = teacher  # a plain attribute, not a submodule: see FrozenTeacher
        self.distill_loss = distill_loss

    @classmethod
    def from_config(cls, cfg):
        args = super().from_config(cfg)
        num_classes = cfg.MODEL.ROI_HEADS.NUM_CLASSES
        # Built first so that a bad loss config fails before the teacher's weights are read.
        args["distill_loss"] = build_loss(cfg.MODEL.DISTILL, num_classes=num_classes + 1, background_index=num_classes,
                                          config_prefix="MODEL.DISTILL")
        args["teacher"] = FrozenTeacher.from_student_cfg(cfg)
        return args

    def _apply(self, fn, *args, **kwargs):
        super()._apply(fn, *args, **kwargs)
        self.teacher.apply(fn)
        return self

    def train(self, mode: bool = True):
        super().train(mode)
        self.teacher.model.eval()
        return self

    def forward(self, batched_inputs: List[Dict]):
        if not self.training:
            return self.inference(batched_inputs)
        images = self.preprocess_image(batched_inputs)
        gt_instances = [x["instances"].to(self.device) for x in batched_inputs]
        features = self.backbone(images.tensor)
        proposals, proposal_losses = self.proposal_generator(images, features, gt_instances)

        heads = self.roi_heads
        proposals = heads.label_and_sample_proposals(proposals, gt_instances)
        boxes = [p.proposal_boxes for p in proposals]
        box_features = heads.box_head(heads.box_pooler([features[f] for f in heads.box_in_features], boxes))
        predictions = heads.box_predictor(box_features)
        del box_features
        losses = heads.box_predictor.losses(predictions, proposals)
        losses.update(proposal_losses)

        student_logits = predictions[0]
        teacher_logits = self.teacher.box_logits(batched_inputs, boxes)
        labels = torch.cat([p.gt_classes for p in proposals])
        groups = torch.repeat_interleave(
            torch.arange(len(proposals), device=labels.device),
            torch.tensor([len(p) for p in proposals], device=labels.device),
        )
        storage = get_event_storage()
        losses.update(self.distill_loss(student_logits, teacher_logits, labels, progress=storage.iter, groups=groups))
        if self.vis_period > 0 and storage.iter % self.vis_period == 0:
            self.visualize_training(batched_inputs, proposals)
        return losses
