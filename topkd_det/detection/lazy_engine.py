"""Training and evaluation from LazyConfig files, as Detectron2's ``tools/lazyconfig_train_net.py``
does them (``train.*`` keys, ``key=value`` overrides), with what the yacs path (``engine.py``) adds:
checks before any work (override keys, datasets, the teacher's config), the progress bar, student-only
checkpoints and evaluation. ``tools/lazyconfig_train_net.py`` is the command line.

Keys read besides Detectron2's (``configs/common/train.py``): ``train.clip_gradients``, a dict with
``SOLVER.CLIP_GRADIENTS``'s keys in lower case (``enabled``, ``clip_type``, ``clip_value``,
``norm_type``), as Detectron2's lazy path has no gradient clipping of its own.
"""
import copy
import logging
from typing import Dict, Sequence

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import LazyConfig, get_cfg, instantiate
from detectron2.engine import AMPTrainer, SimpleTrainer, default_setup, default_writers, hooks
from detectron2.engine.defaults import create_ddp_model
from detectron2.evaluation import inference_on_dataset, print_csv_format
from detectron2.modeling import GeneralizedRCNN
from detectron2.solver.build import maybe_add_gradient_clipping
from detectron2.utils import comm
from detectron2.utils.registry import locate
from omegaconf import DictConfig, OmegaConf

from ..config_io import ConfigError
from .datasets import check_class_count, check_dataset_files, check_dataset_registered, register_builtin_synthetic
from .engine import ProgressBar
from .meta_arch import DistillRCNN
from .teacher import LAZY_KEYS, build_teacher, check_dtype, check_teacher_cfg, resolve_config_path, yacs_teacher_cfg

logger = logging.getLogger(__name__)
_ABSENT = object()
OWN_DATA_HINT = ("register it in the config file with detectron2.data.datasets.register_coco_instances(name, "
                 "{}, json_file, image_root) and name it in dataloader.*.dataset.names")


def _target(node):
    target = node.get("_target_") if isinstance(node, (dict, DictConfig)) else None
    return locate(target) if isinstance(target, str) else target


def check_override_keys(cfg: DictConfig, opts: Sequence[str]) -> None:
    """Every ``key=value`` names a key the config has, or an argument of a lazy call (whose
    defaults configs leave out); a misspelt ``train.max_iters=...`` would otherwise be added silently.
    ``+key=value`` adds a key on purpose, as in Hydra."""
    for opt in opts:
        if "=" not in opt:
            raise ConfigError(f"override {opt!r}: give key=value (Detectron2's LazyConfig overrides)")
        key = opt.split("=", 1)[0]
        if key.startswith("+"):
            continue
        parent, _, _ = key.rpartition(".")
        parent_node = OmegaConf.select(cfg, parent, default=_ABSENT) if parent else cfg
        if OmegaConf.select(cfg, key, default=_ABSENT) is _ABSENT and _target(parent_node) is None:
            siblings = sorted(parent_node.keys()) if isinstance(parent_node, DictConfig) else []
            raise ConfigError(f"override {opt!r}: the config has no key {key!r}"
                              + (f" ({parent or 'top level'} has: {', '.join(siblings)})" if siblings else "")
                              + f"; write +{opt} to add it")


def load_lazy_config(config_file: str, opts: Sequence[str] = ()) -> DictConfig:
    """The LazyConfig file with ``key=value`` overrides; every error names the file or override."""
    resolve_config_path(config_file, "--config-file")
    try:
        cfg = LazyConfig.load(config_file)
    except Exception as err:  # a config file is arbitrary Python
        raise ConfigError(f"{config_file}: cannot be loaded as a LazyConfig ({type(err).__name__}: {err})") from None
    missing = [k for k in ("model", "dataloader", "train") if k not in cfg]
    if missing:
        raise ConfigError(f"{config_file} defines no {', '.join(missing)}: a LazyConfig for training needs "
                          "model, dataloader, optimizer, lr_multiplier and train (configs/common/train.py)")
    check_override_keys(cfg, opts)
    try:
        return LazyConfig.apply_overrides(cfg, list(opts))
    except Exception as err:  # hydra's parser and omegaconf raise their own types
        raise ConfigError(f"override {' '.join(opts)!r}: {type(err).__name__}: {err}") from None


def check_datasets(cfg: DictConfig) -> None:
    """Datasets named in ``dataloader.{train,test}.dataset.names`` are registered, have their files, and
    have the class count of ``model.roi_heads.num_classes``. The synthetic data is registered if generated."""
    register_builtin_synthetic()
    num_classes = OmegaConf.select(cfg, "model.roi_heads.num_classes", default=None)
    for split in ("train", "test"):
        key = f"dataloader.{split}.dataset.names"
        names = OmegaConf.select(cfg, key, default=None)
        for name in [names] if isinstance(names, str) else list(names or []):
            check_dataset_registered(name, key=key, own_data_hint=OWN_DATA_HINT)
            check_dataset_files(name, key=key)
            if num_classes is not None:
                check_class_count(name, key, num_classes, "model.roi_heads.num_classes", LAZY_KEYS.opts)


def check_teacher(cfg: DictConfig) -> None:
    """A ``build_teacher`` node's dtype and (YAML) config, checked before anything is built. Its weights
    are checked when it is built: ``--eval-only`` builds no teacher."""
    teacher = cfg.model.get("teacher") if _target(cfg.model) is DistillRCNN else None
    if _target(teacher) is not build_teacher:
        return
    check_dtype(teacher.get("dtype", "float32"), LAZY_KEYS)
    config = teacher.get("config")
    if isinstance(config, str) and not resolve_config_path(config, LAZY_KEYS.config).endswith(".py"):
        teacher_cfg = yacs_teacher_cfg(config, list(teacher.get("opts", [])), keys=LAZY_KEYS)
        check_teacher_cfg(teacher_cfg, cfg.model.roi_heads.num_classes, "model.roi_heads.num_classes", LAZY_KEYS)


def setup(config_file: str, opts: Sequence[str], args=None) -> DictConfig:
    """Load and check the config; with ``args``, then Detectron2's ``default_setup`` (logging, the
    config dump, seeding). Every check runs before the dump, so a bad config leaves no run folder."""
    cfg = load_lazy_config(config_file, opts)
    check_datasets(cfg)
    check_teacher(cfg)
    if args is not None:
        default_setup(cfg, args)
    return cfg


def student_only(model_cfg: DictConfig) -> DictConfig:
    """A ``DistillRCNN`` node as the plain ``GeneralizedRCNN`` of its student (what inference and
    evaluation run, with no teacher built); other models as they are."""
    model_cfg = copy.deepcopy(model_cfg)
    if _target(model_cfg) is DistillRCNN:
        model_cfg._target_ = GeneralizedRCNN
        for key in ("teacher", "distill_loss"):
            model_cfg.pop(key, None)
    return model_cfg


def with_gradient_clipping(optimizer, options) -> object:
    """The optimizer with ``train.clip_gradients`` applied by Detectron2's own ``maybe_add_gradient_clipping``
    (unset keys take ``SOLVER.CLIP_GRADIENTS``'s defaults)."""
    node = get_cfg()
    clip = node.SOLVER.CLIP_GRADIENTS
    for key, value in (options or {}).items():
        if key.upper() not in clip:
            raise ConfigError(f"train.clip_gradients.{key}: no such option; valid: "
                              f"{', '.join(k.lower() for k in clip)}")
        clip[key.upper()] = value
    if clip.CLIP_TYPE not in ("value", "norm"):
        raise ConfigError(f"train.clip_gradients.clip_type must be 'value' or 'norm', got {clip.CLIP_TYPE!r}")
    return maybe_add_gradient_clipping(node, optimizer)


def evaluate_model(cfg: DictConfig, model) -> Dict:
    """``dataloader.evaluator`` (COCOEvaluator in this project's configs) on ``dataloader.test``."""
    if "evaluator" not in cfg.dataloader:
        return {}
    results = inference_on_dataset(model, instantiate(cfg.dataloader.test), instantiate(cfg.dataloader.evaluator))
    if comm.is_main_process():
        print_csv_format(results)
    return results


def evaluate_student(cfg: DictConfig, resume: bool = False) -> Dict:
    """The student alone, with ``train.init_checkpoint`` (or, with ``resume``, the run's last checkpoint)."""
    model = instantiate(student_only(cfg.model))
    model.to(cfg.train.device)
    model = create_ddp_model(model)
    DetectionCheckpointer(model, save_dir=cfg.train.output_dir).resume_or_load(cfg.train.init_checkpoint,
                                                                               resume=resume)
    return evaluate_model(cfg, model)


def train(cfg: DictConfig, resume: bool = False) -> None:
    model = instantiate(cfg.model)
    logger.info("Model:\n%s", model)
    model.to(cfg.train.device)
    cfg.optimizer.params.model = model
    optimizer = with_gradient_clipping(instantiate(cfg.optimizer), cfg.train.get("clip_gradients"))
    loader = instantiate(cfg.dataloader.train)
    model = create_ddp_model(model, **cfg.train.ddp)
    trainer = (AMPTrainer if cfg.train.amp.enabled else SimpleTrainer)(model, loader, optimizer)
    # The teacher is not a submodule, so checkpoints hold the student only.
    checkpointer = DetectionCheckpointer(model, cfg.train.output_dir, trainer=trainer)
    main = comm.is_main_process()
    trainer.register_hooks([
        hooks.IterationTimer(),
        hooks.LRScheduler(scheduler=instantiate(cfg.lr_multiplier)),
        hooks.PeriodicCheckpointer(checkpointer, **cfg.train.checkpointer) if main else None,
        hooks.EvalHook(cfg.train.eval_period, lambda: evaluate_model(cfg, model)),
        hooks.PeriodicWriter(default_writers(cfg.train.output_dir, cfg.train.max_iter),
                             period=cfg.train.log_period) if main else None,
        ProgressBar(),
    ])
    checkpointer.resume_or_load(cfg.train.init_checkpoint, resume=resume)
    # The checkpoint holds the iteration that finished, so training goes on at the next one.
    start_iter = trainer.iter + 1 if resume and checkpointer.has_checkpoint() else 0
    trainer.train(start_iter, cfg.train.max_iter)
