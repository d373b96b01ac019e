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
from .fast import FAST_PATH_MODES, fast_path_problem
from .models import FIXED_INPUT_SIZE, MODEL_REGISTRY, list_models
from .optim import OPTIMIZERS, SCHEDULERS

DATASETS = ("cifar100", "imagenet", "fashion_mnist")
# Classes of each dataset's standard form; MODEL.NUM_CLASSES 0 means "take it from here".
DATASET_CLASSES = {"cifar100": 100, "imagenet": 1000, "fashion_mnist": 10}
AMP_DTYPES = ("bf16", "fp16")
NATIVE_INPUT_SIZE = {"cifar100": 32, "imagenet": 224, "fashion_mnist": 28}
TRANSFORMS = ("crop_flip", "randaug")


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
    # The teacher sees the student's batch resized (bilinear) to this size; 0: the same batch. The ViT
    # setting's CNN teacher reads 32 px while its students read 224 px.
    cfg.MODEL.TEACHER_INPUT_SIZE = 0

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
    # "crop_flip": the CNN protocols (random crop with padding, flip). "randaug": the ViT protocol of the
    # locality-guidance setting (timm's RandomResizedCrop, flip, RandAugment rand-m9-mstd0.5-inc1, random
    # erasing 0.25, ImageNet mean/std), CIFAR-100 only; see transforms.py.
    cfg.DATASET.TRANSFORM = "crop_flip"
    # Images are resized to this square size (train and test); 0: the dataset's own (32, 28; 224 for
    # ImageNet). The ViT students read 224 px.
    cfg.DATASET.INPUT_SIZE = 0

    cfg.SOLVER = CN()
    cfg.SOLVER.BATCH_SIZE = 64  # global: split evenly over the DDP ranks
    cfg.SOLVER.EPOCHS = 240
    cfg.SOLVER.LR = 0.05
    cfg.SOLVER.LR_DECAY_STAGES = [150, 180, 210]
    cfg.SOLVER.LR_DECAY_RATE = 0.1
    cfg.SOLVER.WEIGHT_DECAY = 5e-4
    cfg.SOLVER.MOMENTUM = 0.9
    cfg.SOLVER.NESTEROV = False
    cfg.SOLVER.OPTIMIZER = "sgd"  # sgd | adamw (optim.py)
    cfg.SOLVER.BETAS = [0.9, 0.999]  # adamw
    cfg.SOLVER.LR_SCHEDULER = "multistep"  # multistep (LR_DECAY_*) | cosine (WARMUP_*, MIN_LR)
    cfg.SOLVER.WARMUP_EPOCHS = 0  # cosine: linear LR warmup from WARMUP_FACTOR * LR
    cfg.SOLVER.WARMUP_FACTOR = 0.001
    cfg.SOLVER.MIN_LR = 0.0  # cosine: the LR at the end of the run
    # True: no weight decay on 1-D parameters (norms, biases), class tokens and position embeddings.
    cfg.SOLVER.SKIP_DECAY_NORM_BIAS_TOKENS = False

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

    # The training path (docs/fast_cifar.md): "never" a DataLoader feeding an eager step; "always" the data
    # on the device, augmented there, and a compiled step captured in a CUDA graph (eager on a CPU);
    # "auto" that on a CUDA device with one process where the config allows it (in-memory data with
    # crop_flip, SGD, no fp16), else the DataLoader. Both train on the same batches from the same seed.
    cfg.FAST_PATH = "never"

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
    _validate_solver(cfg.SOLVER)
    _validate_inputs(cfg)
    if cfg.AMP.DTYPE not in AMP_DTYPES:
        raise ConfigError(f"AMP.DTYPE={cfg.AMP.DTYPE!r} is unknown; valid: {', '.join(AMP_DTYPES)}")
    if cfg.FAST_PATH not in FAST_PATH_MODES:
        raise ConfigError(f"FAST_PATH={cfg.FAST_PATH!r} is unknown; valid: {', '.join(FAST_PATH_MODES)}")
    problem = fast_path_problem(cfg)
    if cfg.FAST_PATH == "always" and problem:
        raise ConfigError(f"FAST_PATH always: {problem}; set FAST_PATH auto or never")


def _validate_solver(solver: CN) -> None:
    if solver.OPTIMIZER not in OPTIMIZERS:
        raise ConfigError(f"SOLVER.OPTIMIZER={solver.OPTIMIZER!r} is unknown; valid: {', '.join(OPTIMIZERS)}")
    if solver.LR_SCHEDULER not in SCHEDULERS:
        raise ConfigError(f"SOLVER.LR_SCHEDULER={solver.LR_SCHEDULER!r} is unknown; valid: {', '.join(SCHEDULERS)}")
    if len(solver.BETAS) != 2 or not all(0.0 <= b < 1.0 for b in solver.BETAS):
        raise ConfigError(f"SOLVER.BETAS must be two numbers in [0, 1), got {list(solver.BETAS)}")
    if solver.NESTEROV and (solver.OPTIMIZER != "sgd" or solver.MOMENTUM <= 0):
        raise ConfigError("SOLVER.NESTEROV needs SOLVER.OPTIMIZER sgd with SOLVER.MOMENTUM > 0")
    if not isinstance(solver.WARMUP_EPOCHS, int) or not 0 <= solver.WARMUP_EPOCHS < solver.EPOCHS:
        raise ConfigError(f"SOLVER.WARMUP_EPOCHS must be a whole number in [0, SOLVER.EPOCHS={solver.EPOCHS}), "
                          f"got {solver.WARMUP_EPOCHS!r}")
    if solver.WARMUP_EPOCHS and solver.LR_SCHEDULER != "cosine":
        raise ConfigError("SOLVER.WARMUP_EPOCHS applies to SOLVER.LR_SCHEDULER cosine only; set it to 0 or use cosine")
    if not 0.0 < solver.WARMUP_FACTOR <= 1.0:
        raise ConfigError(f"SOLVER.WARMUP_FACTOR must lie in (0, 1], got {solver.WARMUP_FACTOR}")
    if not 0.0 <= solver.MIN_LR <= solver.LR:
        raise ConfigError(f"SOLVER.MIN_LR must lie in [0, SOLVER.LR={solver.LR}], got {solver.MIN_LR}")


def _validate_inputs(cfg: CN) -> None:
    d = cfg.DATASET
    if d.TRANSFORM not in TRANSFORMS:
        raise ConfigError(f"DATASET.TRANSFORM={d.TRANSFORM!r} is unknown; valid: {', '.join(TRANSFORMS)}")
    if d.TRANSFORM == "randaug" and d.NAME != "cifar100":
        raise ConfigError(f"DATASET.TRANSFORM randaug is implemented for DATASET.NAME cifar100 only, got {d.NAME!r}")
    for key, value in (("DATASET.INPUT_SIZE", d.INPUT_SIZE), ("MODEL.TEACHER_INPUT_SIZE", cfg.MODEL.TEACHER_INPUT_SIZE)):
        if not isinstance(value, int) or value < 0:
            raise ConfigError(f"{key} must be a whole number >= 0 (0: unchanged), got {value!r}")
    if d.NAME == "imagenet" and d.INPUT_SIZE not in (0, 224):
        raise ConfigError(f"DATASET.INPUT_SIZE={d.INPUT_SIZE}: ImageNet images are cropped to 224; leave it 0")
    fixed = FIXED_INPUT_SIZE.get(cfg.MODEL.STUDENT)
    if fixed and input_size(cfg) != fixed:
        raise ConfigError(f"MODEL.STUDENT={cfg.MODEL.STUDENT!r} reads {fixed} px images; set DATASET.INPUT_SIZE {fixed} "
                          f"(now {input_size(cfg)})")
    teacher_fixed = FIXED_INPUT_SIZE.get(cfg.MODEL.TEACHER) if is_distillation(cfg) else None
    teacher_size = cfg.MODEL.TEACHER_INPUT_SIZE or input_size(cfg)
    if teacher_fixed and teacher_size != teacher_fixed:
        raise ConfigError(f"MODEL.TEACHER={cfg.MODEL.TEACHER!r} reads {teacher_fixed} px images; set "
                          f"MODEL.TEACHER_INPUT_SIZE {teacher_fixed} (now {teacher_size})")


def input_size(cfg: CN) -> int:
    """The side of the square images the student reads."""
    return cfg.DATASET.INPUT_SIZE or NATIVE_INPUT_SIZE[cfg.DATASET.NAME]


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
