"""Classification config: defaults, YAML loading with ``_BASE_`` inheritance, and checks at load.

fvcore's ``CfgNode`` is yacs' with ``_BASE_`` support (the Detectron2 convention), so a pair's YAML can
inherit its dataset's base file. Every check here runs before any data or weights are read, and each
error names the key and what would fix it.
"""
import os
from typing import Iterable, Optional

from fvcore.common.config import CfgNode as CN

from ..config_io import ConfigError, merge_config
from ..core import build_loss
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
    cfg.OUTPUT_DIR = "output/cls"
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


def validate_cls_cfg(cfg: CN, check_files: bool = True) -> None:
    """Raise ``ConfigError`` naming the key for every bad value; ``check_files`` also checks that the
    teacher/student weight files exist (off for tests that only check the YAMLs)."""
    if cfg.DATASET.NAME not in DATASETS:
        raise ConfigError(f"DATASET.NAME={cfg.DATASET.NAME!r} is unknown; valid: {', '.join(DATASETS)}")
    _check_model_name("MODEL.STUDENT", cfg.MODEL.STUDENT)
    classes = num_classes(cfg)
    try:
        build_loss(cfg.DISTILL, num_classes=classes)
    except (KeyError, TypeError, ValueError) as err:
        raise ConfigError(f"DISTILL: {err}") from None
    # build_loss checks TopKD's K against the classes; GDKD's top-k is only checked on the first batch.
    if cfg.DISTILL.METHOD == "gdkd" and not 1 <= cfg.DISTILL.GDKD.K < classes:
        raise ConfigError(f"DISTILL.GDKD.K={cfg.DISTILL.GDKD.K} must satisfy 1 <= K < {classes} (the class count)")
    if cfg.DISTILL.METHOD == "gdkd3" and not 2 <= cfg.DISTILL.GDKD3.K < classes:
        raise ConfigError(f"DISTILL.GDKD3.K={cfg.DISTILL.GDKD3.K} must satisfy 2 <= K < {classes} (the class count)")
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
    solver = cfg.SOLVER
    for key in ("BATCH_SIZE", "EPOCHS"):
        if solver[key] < 1:
            raise ConfigError(f"SOLVER.{key} must be >= 1, got {solver[key]}")
    if list(solver.LR_DECAY_STAGES) != sorted(solver.LR_DECAY_STAGES):
        raise ConfigError(f"SOLVER.LR_DECAY_STAGES must be increasing, got {list(solver.LR_DECAY_STAGES)}")
    if cfg.AMP.DTYPE not in AMP_DTYPES:
        raise ConfigError(f"AMP.DTYPE={cfg.AMP.DTYPE!r} is unknown; valid: {', '.join(AMP_DTYPES)}")
    if cfg.LOG.PERIOD < 1 or cfg.CHECKPOINT_PERIOD < 1:
        raise ConfigError("LOG.PERIOD and CHECKPOINT_PERIOD must be >= 1")


def load_cls_cfg(config_file: Optional[str] = None, opts: Iterable[str] = (), check_files: bool = True) -> CN:
    """Defaults, then ``config_file`` (with its ``_BASE_`` chain), then ``KEY VALUE`` opts; validated, frozen."""
    cfg = merge_config(get_cls_cfg(), config_file, opts)
    validate_cls_cfg(cfg, check_files=check_files)
    cfg.freeze()
    return cfg
