"""Checks of the extension's config keys that run right after the config is read: before Detectron2's
``default_setup`` dumps it, before any model is built and before any weights are read."""
from detectron2.config import CfgNode

from ..config_io import ConfigError
from ..core import LossOptionError, build_loss

DISTILL_PREFIX = "MODEL.DISTILL"
TEACHER_DTYPES = ("float32", "bfloat16", "float16")
# Detectron2 solver keys whose bad values would train silently wrong or not at all: (key, lowest, strict).
_SOLVER_RANGES = (("MAX_ITER", 1, False), ("IMS_PER_BATCH", 1, False), ("CHECKPOINT_PERIOD", 1, False),
                  ("BASE_LR", 0, True))


def check_distill_config(cfg: CfgNode) -> None:
    """Raise ``ConfigError`` naming the key: every ``MODEL.DISTILL`` knob (type, range, K against the
    class count), ``MODEL.TEACHER.DTYPE``, the solver's lengths, ``DATASETS.MAX_BAD_BOX_FRACTION``
    and what Cascade R-CNN asserts."""
    num_classes = cfg.MODEL.ROI_HEADS.NUM_CLASSES
    try:
        # Detection logits have a background column: C = NUM_CLASSES + 1.
        build_loss(cfg.MODEL.DISTILL, num_classes=num_classes + 1, background_index=num_classes,
                   config_prefix=DISTILL_PREFIX)
    except LossOptionError as err:
        hint = ""
        if err.path in (("topkd", "k"), ("gdkd", "k")):
            hint = f" (in detection C = MODEL.ROI_HEADS.NUM_CLASSES + 1 = {num_classes} + 1, the background)"
        raise ConfigError(f"{err}{hint}") from None
    if cfg.MODEL.TEACHER.DTYPE not in TEACHER_DTYPES:
        raise ConfigError(f"MODEL.TEACHER.DTYPE must be one of {', '.join(TEACHER_DTYPES)}; "
                          f"got {cfg.MODEL.TEACHER.DTYPE!r}")
    for key, lowest, strict in _SOLVER_RANGES:
        value = cfg.SOLVER[key]
        if value < lowest or (strict and value == lowest):
            raise ConfigError(f"SOLVER.{key} must be {'>' if strict else '>='} {lowest}, got {value}")
    # Detectron2 ignores steps beyond MAX_ITER (with a warning) but fails on one equal to it, in every
    # process, once the model is built.
    if cfg.SOLVER.MAX_ITER in cfg.SOLVER.STEPS:
        raise ConfigError(f"SOLVER.STEPS {tuple(cfg.SOLVER.STEPS)} contains SOLVER.MAX_ITER {cfg.SOLVER.MAX_ITER}: "
                          "an LR step must come before the last iteration; lower it or raise SOLVER.MAX_ITER")
    fraction = cfg.DATASETS.MAX_BAD_BOX_FRACTION
    if not 0.0 <= fraction <= 1.0:
        raise ConfigError(f"DATASETS.MAX_BAD_BOX_FRACTION must be in [0, 1] (a fraction of the boxes), got {fraction}")
    check_family_config(cfg)


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
