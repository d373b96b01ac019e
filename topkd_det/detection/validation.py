"""Checks of the extension's config keys that run right after the config is read: before Detectron2's
``default_setup`` dumps it, before any model is built and before any weights are read."""
from detectron2.config import CfgNode

from ..config_io import ConfigError
from ..core import LossOptionError, build_loss
from .families import check_family_config
from .teacher import YACS_KEYS, check_input_size

DISTILL_PREFIX = "MODEL.DISTILL"
TEACHER_DTYPES = ("float32", "bfloat16", "float16")
# Detectron2 solver keys whose bad values would train silently wrong or not at all: (key, lowest, strict).
_SOLVER_RANGES = (("MAX_ITER", 1, False), ("IMS_PER_BATCH", 1, False), ("CHECKPOINT_PERIOD", 1, False),
                  ("BASE_LR", 0, True))


def check_amp_device(enabled: bool, device: str, amp_key: str, device_key: str) -> None:
    """Detectron2's ``AMPTrainer`` asserts CUDA at its first step; refused here, before any work."""
    if enabled and not str(device).startswith("cuda"):
        raise ConfigError(f"{amp_key} is on, but {device_key} is {device!r}: Detectron2's AMPTrainer trains on CUDA "
                          f"only; turn {amp_key} off to train on the CPU")


def check_distill_config(cfg: CfgNode) -> None:
    """Raise ``ConfigError`` naming the key: every ``MODEL.DISTILL`` knob (type, range, K against the
    class count), ``MODEL.TEACHER.DTYPE`` and ``INPUT_SIZE``, the solver's lengths, AMP's device,
    ``DATASETS.MAX_BAD_BOX_FRACTION`` and what Cascade R-CNN asserts."""
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
    check_input_size(cfg.MODEL.TEACHER.INPUT_SIZE, YACS_KEYS)
    check_amp_device(cfg.SOLVER.AMP.ENABLED, cfg.MODEL.DEVICE, "SOLVER.AMP.ENABLED", "MODEL.DEVICE")
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
