"""``DistillRCNN``: a Faster, Mask or Cascade R-CNN student trained beside a frozen teacher.

The student runs its own ``GeneralizedRCNN`` training forward, unchanged (RPN, ROI heads, mask
head), so nothing of it runs twice. Its box predictors are turned into ``DistillingOutputLayers``:
where the ROI heads ask a stage's predictor for its losses, with that stage's sampled proposals
and the student's class logits, the teacher head paired with that stage (``families.pair_stages``)
scores the same boxes from teacher features computed once per step, and the core loss on the two
(labels: the matched ``gt_classes``, background = C) joins that stage's losses. ``CascadeROIHeads``
renames each stage's keys to ``loss_<term>_stage<k>`` itself. Inference is the student alone.
"""
import logging
from typing import Any, Dict, List, Mapping, Optional

import torch
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, GeneralizedRCNN
from detectron2.modeling.roi_heads import FastRCNNOutputLayers
from detectron2.structures import Instances
from detectron2.utils.events import get_event_storage

from ..core import DistillationLoss, build_loss
from .families import box_stages, family_name, pair_stages
from .teacher import FrozenTeacher

logger = logging.getLogger(__name__)

# As MODEL.DISTILL's defaults: no distillation unless asked for, and no CE term, because the
# student's box predictor already applies CE to the same ROI logits (its loss_cls).
DETECTION_LOSS_DEFAULTS = {"method": "none", "ce_weight": 0.0}


def build_distill_loss(options: Optional[Mapping[str, Any]], num_classes: int,
                       config_prefix: Optional[str] = None) -> DistillationLoss:
    """The loss on per-ROI logits of ``num_classes`` + 1 classes, background last.

    ``options`` is the tree of ``MODEL.DISTILL``: the yacs node itself, or a mapping with the same
    keys in lower case (a lazy config's ``dict(method="topkd", topkd=dict(k=10))``). Errors name an
    option by its API path (``topkd.k``), or below ``config_prefix`` (``MODEL.DISTILL.TOPKD.K``).
    """
    return build_loss(DETECTION_LOSS_DEFAULTS, num_classes=num_classes + 1, background_index=num_classes,
                      config_prefix=config_prefix, **dict(options or {}))


class _Step:
    """What one training step shares between ``DistillRCNN.forward`` and the stage predictors."""

    teacher_features: Optional[List[torch.Tensor]] = None


class StageDistiller:
    """The distillation terms of one student stage, computed when its predictor's losses are."""

    def __init__(self, step: _Step, teacher: FrozenTeacher, loss: DistillationLoss, teacher_stage: int):
        self.step, self.teacher, self.loss, self.teacher_stage = step, teacher, loss, teacher_stage

    def __call__(self, student_logits: torch.Tensor, proposals: List[Instances]) -> Dict[str, torch.Tensor]:
        if self.step.teacher_features is None:
            raise RuntimeError("a distilling box predictor computed its losses outside DistillRCNN's training "
                               "forward, where there are no teacher features to distill from")
        boxes = self.teacher.teacher_boxes(proposals)
        teacher_logits = self.teacher.box_logits(self.step.teacher_features, boxes, self.teacher_stage)
        labels = torch.cat([p.gt_classes for p in proposals])
        # Each image's ROI count, known on the host: image scope contrasts per-image blocks without a sync.
        groups = [len(p) for p in proposals]
        return self.loss(student_logits, teacher_logits, labels, progress=get_event_storage().iter, groups=groups)


class DistillingOutputLayers(FastRCNNOutputLayers):
    """A ``FastRCNNOutputLayers`` whose ``losses()`` also return its stage's distillation terms.

    Not constructed: ``DistillRCNN`` assigns this class to the student's built predictors (as
    ``torch.nn.utils.parametrize`` does to the modules it parametrizes). The parameters, buffers and
    their names stay those of the student's own predictor, so a saved student loads strictly into a
    plain model of its family, and every other method is FastRCNNOutputLayers' own.
    """

    distiller: StageDistiller

    def losses(self, predictions, proposals):
        losses = super().losses(predictions, proposals)
        losses.update(self.distiller(predictions[0], proposals))
        return losses


@META_ARCH_REGISTRY.register()
class DistillRCNN(GeneralizedRCNN):
    """A ``GeneralizedRCNN`` student of a supported family (``families.SUPPORTED``) with a frozen teacher.

    Built from a yacs config (``MODEL.META_ARCHITECTURE: DistillRCNN``, ``MODEL.TEACHER``,
    ``MODEL.DISTILL``) or by ``instantiate`` from a LazyConfig: the student's ``GeneralizedRCNN``
    arguments plus ``teacher`` (``build_teacher``) and ``distill_loss`` (``build_distill_loss``).
    """

    @configurable
    def __init__(self, *, teacher: FrozenTeacher, distill_loss: DistillationLoss, **kwargs):
        # Before GeneralizedRCNN's __init__, which would only say that a RetinaNet's arguments are unexpected.
        stages = box_stages(kwargs.get("roi_heads"), kwargs.get("proposal_generator"), "student")
        super().__init__(**kwargs)
        num_classes = self.roi_heads.num_classes
        if teacher.num_classes != num_classes:
            raise ValueError(f"teacher has {teacher.num_classes} classes (its ROI_HEADS.NUM_CLASSES) but the student "
                             f"has {num_classes}; distillation needs the same label space")
        if (distill_loss.num_classes, distill_loss.background_index) != (num_classes + 1, num_classes):
            raise ValueError(f"the distillation loss was built for {distill_loss.num_classes} classes with background "
                             f"index {distill_loss.background_index}, but the student's ROI logits have "
                             f"{num_classes + 1} with background {num_classes}: build it with "
                             f"build_distill_loss(options, num_classes={num_classes})")
        pairing = pair_stages(stages, teacher.stages)
        teacher.take_inputs_of(self.input_format)
        self.teacher = teacher  # a plain attribute, not a submodule: see FrozenTeacher
        self.distill_loss = distill_loss
        self._step = _Step()
        for stage, teacher_stage in zip(stages, pairing):
            stage.predictor.__class__ = DistillingOutputLayers
            stage.predictor.distiller = StageDistiller(self._step, teacher, distill_loss, teacher_stage)
        logger.info("DistillRCNN: %s student, %s teacher; student stage -> teacher head: %s",
                    family_name(self.roi_heads), teacher.family,
                    ", ".join(f"{k + 1} -> {t + 1}" for k, t in enumerate(pairing)))

    @classmethod
    def from_config(cls, cfg):
        args = super().from_config(cfg)
        # The student is checked before the teacher's weights are read (again in __init__, which
        # lazy configs call directly), and so is the loss config.
        box_stages(args["roi_heads"], args["proposal_generator"], "student")
        args["distill_loss"] = build_distill_loss(cfg.MODEL.DISTILL, cfg.MODEL.ROI_HEADS.NUM_CLASSES,
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
        # Computed before the student's forward, so that the teacher's transient activations come
        # before the student's kept ones at the memory peak; dropped before the backward.
        self._step.teacher_features = self.teacher.features(batched_inputs)
        try:
            return super().forward(batched_inputs)
        finally:
            self._step.teacher_features = None
