"""The R-CNN families DistillRCNN distills, and per family: which proposals, which student logits,
which teacher head. This is the only module that knows the families; a new one is an entry in
``_STAGES`` (its box stages) plus, if its stages pair differently, a rule in ``pair_stages``.

Every supported family's ROI heads call their box predictor's public ``losses(predictions,
proposals)`` once per stage, with that stage's sampled proposals (``proposal_boxes``, ``gt_classes``)
and the student's own class scores ``predictions[0]``; that call is where the distillation terms are
added (``meta_arch.DistillingOutputLayers``). So *which proposals* and *which student logits* are the
ones the family's own training forward hands its loss, and this module only decides *which teacher
head* scores each student stage:

- Faster R-CNN and Mask R-CNN (``StandardROIHeads``): one stage, the RPN proposals sampled by
  ``ROI_HEADS.BATCH_SIZE_PER_IMAGE``. The mask head trains on the foreground ones, undistilled.
- Cascade R-CNN (``CascadeROIHeads``): stage k's proposals are stage k-1's regressed boxes, matched
  at stage k's IoU. A Cascade teacher scores them with its head of the same stage (trained on that
  IoU); a Faster/Mask teacher with its single head, at every stage.
- A Cascade teacher for a Faster/Mask student scores the RPN proposals with its stage-0 head: the
  one trained on that proposal distribution (IoU 0.5 matching of RPN boxes), which the later,
  higher-IoU heads never saw.

Types are checked exactly, not with ``isinstance``: a subclass may change the forward (as
``CascadeROIHeads`` does to ``StandardROIHeads``) and must be refused here, not crash later.
"""
from dataclasses import dataclass
from typing import Callable, Dict, List, Sequence

from torch import nn

from detectron2.config import CfgNode
from detectron2.modeling import GeneralizedRCNN
from detectron2.modeling.roi_heads import CascadeROIHeads, FastRCNNOutputLayers, StandardROIHeads

from ..config_io import ConfigError

SUPPORTED = ("Faster R-CNN and Mask R-CNN (StandardROIHeads) and Cascade R-CNN and Cascade Mask R-CNN "
             "(CascadeROIHeads): a GeneralizedRCNN with FastRCNNOutputLayers box predictors trained with "
             "softmax cross-entropy, without a keypoint head")


@dataclass(frozen=True)
class BoxStage:
    """One classification stage of an R-CNN's ROI heads."""

    box_head: nn.Module
    predictor: FastRCNNOutputLayers


# ROI-heads class -> its box stages, in the order the heads run them.
_STAGES: Dict[type, Callable[[nn.Module], List[BoxStage]]] = {
    StandardROIHeads: lambda heads: [BoxStage(heads.box_head, heads.box_predictor)],
    CascadeROIHeads: lambda heads: [BoxStage(h, p) for h, p in zip(heads.box_head, heads.box_predictor)],
}


class UnsupportedModelError(ValueError):
    """A teacher or student that DistillRCNN cannot distill, refused when the model is built."""


def _refuse(role: str, what: str) -> UnsupportedModelError:
    return UnsupportedModelError(f"DistillRCNN cannot distill this {role}: {what}. Supported: {SUPPORTED}")


def _class_name(obj) -> str:
    return f"{type(obj).__module__}.{type(obj).__qualname__}"


def family_name(roi_heads: nn.Module) -> str:
    cascade = type(roi_heads) is CascadeROIHeads
    mask = getattr(roi_heads, "mask_on", False)
    return ("Cascade " if cascade else "") + ("Mask R-CNN" if mask else ("R-CNN" if cascade else "Faster R-CNN"))


def box_stages(roi_heads: nn.Module, proposal_generator: nn.Module, role: str) -> List[BoxStage]:
    """The box stages of a supported model's ROI heads; anything else is refused with what is supported.

    ``proposal_generator`` is checked too (None is a proposal-free model); ``role`` is "student" or
    "teacher", for the message.
    """
    if roi_heads is None or proposal_generator is None:
        missing = "ROI heads" if roi_heads is None else "proposal generator"
        raise _refuse(role, f"it has no {missing} (RetinaNet, FCOS and other proposal-free detectors, and "
                            "precomputed proposals, have no per-ROI class logits to distill)")
    stages_of = _STAGES.get(type(roi_heads))
    if stages_of is None:
        raise _refuse(role, f"its ROI heads are {_class_name(roi_heads)} "
                            "(MODEL.ROI_HEADS.NAME), whose stages DistillRCNN does not know")
    if getattr(roi_heads, "keypoint_on", False):
        raise _refuse(role, "it has a keypoint head (MODEL.KEYPOINT_ON)")
    stages = stages_of(roi_heads)
    for k, stage in enumerate(stages):
        where = f"box predictor of stage {k}" if len(stages) > 1 else "box predictor"  # as loss_cls_stage<k>
        if type(stage.predictor) is not FastRCNNOutputLayers:
            raise _refuse(role, f"its {where} is {_class_name(stage.predictor)}, not FastRCNNOutputLayers")
        if getattr(stage.predictor, "use_sigmoid_ce", False):
            raise _refuse(role, f"its {where} is trained with sigmoid cross-entropy "
                                "(MODEL.ROI_BOX_HEAD.USE_SIGMOID_CE), so its logits are not a softmax over C+1 classes")
    return stages


def teacher_stages(model: nn.Module) -> List[BoxStage]:
    """The box stages of a teacher model, which must be a plain ``GeneralizedRCNN`` of a supported family."""
    if type(model) is not GeneralizedRCNN:
        raise _refuse("teacher", f"it is a {_class_name(model)}, not a GeneralizedRCNN (RetinaNet, FCOS and "
                                 "other proposal-free detectors have no per-ROI class logits to distill)")
    return box_stages(model.roi_heads, model.proposal_generator, "teacher")


def pair_stages(student: Sequence[BoxStage], teacher: Sequence[BoxStage]) -> List[int]:
    """For each student stage, the index of the teacher stage whose head scores its proposals."""
    n, m = len(student), len(teacher)
    if m == 1:
        return [0] * n
    if n == 1:
        return [0]
    if n == m:
        return list(range(n))
    raise UnsupportedModelError(
        f"a Cascade teacher with {m} stages cannot score the stages of a Cascade student with {n}: stage k's "
        "proposals are matched at stage k's IoU, so the stages pair one to one. Give both the same "
        "MODEL.ROI_BOX_CASCADE_HEAD.IOUS, or use a Faster/Mask R-CNN teacher (its head scores every stage)")


def check_family_config(cfg: CfgNode, whose: str = "", fix: str = "") -> None:
    """What Detectron2's Cascade R-CNN asserts of its config, as a ``ConfigError`` naming the key.
    ``whose`` ("the teacher's ") and ``fix`` (where its keys are set) word it for a teacher's config."""
    if cfg.MODEL.ROI_HEADS.NAME != "CascadeROIHeads":
        return
    where = f"; {fix}" if fix else ""
    if not cfg.MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG:
        raise ConfigError(f"{whose}MODEL.ROI_HEADS.NAME is CascadeROIHeads, which needs "
                          f"{whose}MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG True (each stage refines one box per "
                          f"proposal, not one per class){where}")
    ious, weights = cfg.MODEL.ROI_BOX_CASCADE_HEAD.IOUS, cfg.MODEL.ROI_BOX_CASCADE_HEAD.BBOX_REG_WEIGHTS
    if len(ious) != len(weights):
        raise ConfigError(f"{whose}MODEL.ROI_BOX_CASCADE_HEAD.IOUS has {len(ious)} stages but BBOX_REG_WEIGHTS has "
                          f"{len(weights)}: give one weight tuple per stage{where}")
    if ious[0] != cfg.MODEL.ROI_HEADS.IOU_THRESHOLDS[0]:
        raise ConfigError(f"{whose}MODEL.ROI_BOX_CASCADE_HEAD.IOUS[0] is {ious[0]} but "
                          f"{whose}MODEL.ROI_HEADS.IOU_THRESHOLDS[0] is {cfg.MODEL.ROI_HEADS.IOU_THRESHOLDS[0]}: "
                          f"Cascade R-CNN's first stage matches at the ROI heads' threshold, so make them equal{where}")
