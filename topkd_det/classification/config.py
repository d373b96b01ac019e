"""Classification config: defaults, YAML loading with ``_BASE_`` inheritance, and checks at load.

fvcore's ``CfgNode`` is yacs' with ``_BASE_`` support (the Detectron2 convention), so a pair's YAML can
inherit its dataset's base file. Every check here runs before any data or weights are read, and each
error names the key and what would fix it.
"""
import os
from typing import Iterable, Optional

from fvcore.common.config import CfgNode as CN

from ..config_io import ConfigError, merge_config, output_dir_for
from ..core import LossOptionError, build_loss
from ..distill_config import distill_cfg_node
from .models import MODEL_REGISTRY, list_models

DATASETS = ("cifar100", "imagenet", "fashion_mnist")
# Classes of each dataset's standard form; MODEL.NUM_CLASSES 0 means "take it from here".
DATASET_CLASSES = {"cifar100": 100, "imagenet": 1000, "fashion_mnist": 10}
AMP_DTYPES = ("bf16", "fp16")


def get_cls_cfg() -> CN:
    """A fresh node holding every classification default."""
    cfg = CN()
    cfg.MODEL = CN()
    cfg.MODEL.STUDENT = "resnet8x4"
    cfg.MODEL.TEACHER = ""
    # A plain state dict, an mdistiller-style {"model": ...} checkpoint, or a torchvision weight file.
    cfg.MODEL.TEACHER_WEIGHTS = ""
    # Student weights to start from (or to evaluate with --eval-only); empty: random init.
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.NUM_CLASSES = 0  # 0: the dataset's class count (DATASET_CLASSES)

    cfg.DATASET = CN()
    cfg.DATASET.NAME = "cifar100"
    cfg.DATASET.ROOT = ""
    cfg.DATASET.NUM_WORKERS = 0
    cfg.DATASET.AUGMENT = True
    # Train images held out (taken from the train split) as a validation split for choosing knobs;
    # the held-out set is fixed by VAL_SEED, so it is the same for every training seed.
    cfg.DATASET.VAL_SIZE = 0
    cfg.DATASET.VAL_SEED = 0
    # Train on this many (randomly chosen, by VAL_SEED) train images; 0: all. For budgeted benchmarks.
    cfg.DATASET.TRAIN_SUBSET = 0

    cfg.SOLVER = CN()
    cfg.SOLVER.BATCH_SIZE = 64  # global: split evenly over the DDP ranks
    cfg.SOLVER.EPOCHS = 240
    cfg.SOLVER.LR = 0.05
    cfg.SOLVER.LR_DECAY_STAGES = [150, 180, 210]
    cfg.SOLVER.LR_DECAY_RATE = 0.1
    cfg.SOLVER.WEIGHT_DECAY = 5e-4
    cfg.SOLVER.MOMENTUM = 0.9

    cfg.TEST = CN()
    cfg.TEST.BATCH_SIZE = 256  # per process: evaluation needs no fixed global batch
    # Evaluate the teacher once at the start of a distillation run: a wrong checkpoint shows at once.
    cfg.TEST.EVAL_TEACHER = True

    # The loss warmup is DISTILL.WARMUP, in epochs (20 on CIFAR as DKD, 1 on ImageNet).
    cfg.DISTILL = distill_cfg_node(CN)
    cfg.DISTILL.METHOD = "none"

    cfg.AMP = CN()
    cfg.AMP.ENABLED = False
    cfg.AMP.DTYPE = "bf16"

    cfg.SEED = 0
    # Empty: output/<config path below configs/> (see config_io.output_dir_for), one folder per config.
    cfg.OUTPUT_DIR = ""
    cfg.LOG = CN()
    cfg.LOG.TENSORBOARD = True
    cfg.LOG.PERIOD = 50  # iterations between train-metric lines in metrics.jsonl / TensorBoard
    # A numbered copy of the checkpoint every this many epochs (last.pth is rewritten every epoch).
    cfg.CHECKPOINT_PERIOD = 40
    return cfg


def num_classes(cfg: CN) -> int:
    return cfg.MODEL.NUM_CLASSES or DATASET_CLASSES[cfg.DATASET.NAME]


def is_distillation(cfg: CN) -> bool:
    return cfg.DISTILL.METHOD != "none"


def _check_model_name(key: str, name: str) -> None:
    if name not in MODEL_REGISTRY:
        raise ConfigError(f"{key}={name!r} is not a known model; valid names: {', '.join(list_models())}")


# (key, lowest allowed value, whether the lowest is excluded): the numeric settings outside DISTILL.
_NUMERIC_RANGES = (
    ("MODEL.NUM_CLASSES", 0, False),
    ("DATASET.NUM_WORKERS", 0, False),
    ("DATASET.VAL_SIZE", 0, False),
    ("DATASET.TRAIN_SUBSET", 0, False),
    ("SOLVER.BATCH_SIZE", 1, False),
    ("SOLVER.EPOCHS", 1, False),
    ("SOLVER.LR", 0, True),
    ("SOLVER.LR_DECAY_RATE", 0, True),
    ("SOLVER.WEIGHT_DECAY", 0, False),
    ("SOLVER.MOMENTUM", 0, False),
    ("TEST.BATCH_SIZE", 1, False),
    ("LOG.PERIOD", 1, False),
    ("CHECKPOINT_PERIOD", 1, False),
)


def _value(cfg: CN, key: str):
    node = cfg
    for part in key.split("."):
        node = node[part]
    return node


def _check_ranges(cfg: CN) -> None:
    for key, lowest, strict in _NUMERIC_RANGES:
        value = _value(cfg, key)
        if value < lowest or (strict and value == lowest):
            raise ConfigError(f"{key} must be {'>' if strict else '>='} {lowest}, got {value}")
    stages = list(cfg.SOLVER.LR_DECAY_STAGES)
    if any(not isinstance(e, int) or isinstance(e, bool) or e < 1 for e in stages):
        raise ConfigError(f"SOLVER.LR_DECAY_STAGES must be epoch numbers >= 1, got {stages}")
    if stages != sorted(stages):
        raise ConfigError(f"SOLVER.LR_DECAY_STAGES must be increasing, got {stages}")


def validate_cls_cfg(cfg: CN, check_files: bool = True) -> None:
    """Raise ``ConfigError`` naming the key for every bad value; ``check_files`` also checks that the
    teacher/student weight files exist (off for tests that only check the YAMLs)."""
    if cfg.DATASET.NAME not in DATASETS:
        raise ConfigError(f"DATASET.NAME={cfg.DATASET.NAME!r} is unknown; valid: {', '.join(DATASETS)}")
    _check_model_name("MODEL.STUDENT", cfg.MODEL.STUDENT)
    _check_ranges(cfg)
    try:
        build_loss(cfg.DISTILL, num_classes=num_classes(cfg), config_prefix="DISTILL")
    except LossOptionError as err:
        raise ConfigError(str(err)) from None
    if cfg.DISTILL.TOPKD.SCOPE != "batch":
        raise ConfigError(f"DISTILL.TOPKD.SCOPE={cfg.DISTILL.TOPKD.SCOPE!r}: classification rows are images, "
                          "so only 'batch' applies ('image' groups the ROIs of one image in detection)")
    if is_distillation(cfg):
        if not cfg.MODEL.TEACHER:
            raise ConfigError(f"DISTILL.METHOD={cfg.DISTILL.METHOD!r} needs a teacher: set MODEL.TEACHER")
        _check_model_name("MODEL.TEACHER", cfg.MODEL.TEACHER)
        if not cfg.MODEL.TEACHER_WEIGHTS:
            raise ConfigError(
                f"DISTILL.METHOD={cfg.DISTILL.METHOD!r} needs trained teacher weights: set MODEL.TEACHER_WEIGHTS "
                "(train one with DISTILL.METHOD none and MODEL.STUDENT set to the teacher)"
            )
    weight_keys = [("MODEL.WEIGHTS", cfg.MODEL.WEIGHTS)]
    if is_distillation(cfg):
        weight_keys.append(("MODEL.TEACHER_WEIGHTS", cfg.MODEL.TEACHER_WEIGHTS))
    for key, path in weight_keys:
        if check_files and path and not os.path.isfile(path):
            raise ConfigError(f"{key}: no such file {path!r} (relative paths are from {os.getcwd()!r})")
    if cfg.AMP.DTYPE not in AMP_DTYPES:
        raise ConfigError(f"AMP.DTYPE={cfg.AMP.DTYPE!r} is unknown; valid: {', '.join(AMP_DTYPES)}")


def load_cls_cfg(config_file: Optional[str] = None, opts: Iterable[str] = (), check_files: bool = True) -> CN:
    """Defaults, then ``config_file`` (with its ``_BASE_`` chain), then ``KEY VALUE`` opts; validated, frozen.

    An empty OUTPUT_DIR becomes ``output/<config path below configs/>`` (``output/cls`` without a file).
    """
    cfg = merge_config(get_cls_cfg(), config_file, opts)
    if not cfg.OUTPUT_DIR:
        cfg.OUTPUT_DIR = output_dir_for(config_file) if config_file else "output/cls"
    validate_cls_cfg(cfg, check_files=check_files)
    cfg.freeze()
    return cfg
