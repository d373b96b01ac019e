"""Training and evaluation from LazyConfig files, as Detectron2's ``tools/lazyconfig_train_net.py``
does them (``train.*`` keys, ``key=value`` overrides), with what the yacs path (``engine.py``) adds:
checks before any work (override keys, datasets, the teacher's config), the progress bar, student-only
checkpoints and evaluation. ``tools/lazyconfig_train_net.py`` is the command line.

Keys read besides Detectron2's (``configs/common/train.py``): ``train.clip_gradients``, a dict with
``SOLVER.CLIP_GRADIENTS``'s keys in lower case (``enabled``, ``clip_type``, ``clip_value``,
``norm_type``), as Detectron2's lazy path has no gradient clipping of its own; ``train.seed``, which
Detectron2's ``default_setup`` seeds with, also seeds the training data order.

Resuming follows the yacs path's rules (``resume.py``): atomic checkpoints that store the config, a
refused resume under a config that changes the result (``--allow-config-change`` records it), a
fallback past damaged checkpoints, restored RNG states, and a data stream that continues where the
checkpoint stopped when ``dataloader.train`` is Detectron2's ``build_detection_train_loader`` without
a sampler of its own.
"""
import copy
import logging
from typing import Any, Dict, Optional, Sequence

from detectron2.config import LazyConfig, get_cfg, instantiate
from detectron2.data import build_detection_train_loader
from detectron2.data.samplers import TrainingSampler
from detectron2.engine import AMPTrainer, SimpleTrainer, default_writers, hooks
from detectron2.engine.defaults import create_ddp_model
from detectron2.evaluation import inference_on_dataset, print_csv_format
from detectron2.modeling import GeneralizedRCNN
from detectron2.solver.build import maybe_add_gradient_clipping
from detectron2.utils import comm
from detectron2.utils.registry import locate
from omegaconf import DictConfig, OmegaConf

from ..config_io import ConfigError
from ..resume_rules import ResumeRules, check_resume, flatten
from .checkpoint import AtomicCheckpointer, newest_readable_checkpoint
from .datasets import check_class_count, check_dataset_files, check_dataset_registered, register_builtin_synthetic
from .engine import ProgressBar, run_setup
from .meta_arch import DistillRCNN, build_distill_loss
from .replicas import ReplicaSync, ddp_kwargs, insert_before_readers
from .resume import (PROCESSES, ContinuingSampler, DeferredLoader, peek_checkpoint, resume_from,
                     rewrite_unreadable_final, stored_fingerprint, teacher_digest)
from .teacher import (LAZY_KEYS, build_teacher, check_dtype, check_input_size, check_teacher_cfg, resolve_config_path,
                      yacs_teacher_cfg)
from .tool import check_batch_split
from .validation import check_amp_device

logger = logging.getLogger(__name__)
_ABSENT = object()
# As the yacs path's RESUME_RULES: only where and how often files are written, and what evaluation
# runs on, may change on resume; train.max_iter is the schedule's length.
LAZY_RESUME_RULES = ResumeRules("train.max_iter", ("train.output_dir", "train.checkpointer.", "train.eval_period",
                                                   "train.log_period", "dataloader.test.", "dataloader.evaluator."),
                                "iterations")
LOSS_OPTIONS_KEY = "model.distill_loss.options"
OWN_DATA_HINT = ("register it in the config file with detectron2.data.datasets.register_coco_instances(name, "
                 "{}, json_file, image_root) and name it in dataloader.*.dataset.names")


def _target(node):
    target = node.get("_target_") if isinstance(node, (dict, DictConfig)) else None
    return locate(target) if isinstance(target, str) else target


def check_override_keys(cfg: DictConfig, opts: Sequence[str]) -> None:
    """Every ``key=value`` names a key the config has, or an argument of a lazy call (whose
    defaults configs leave out); a misspelt ``train.max_iters=...`` would otherwise be added silently.
    ``+key=value`` adds a key on purpose, as in Hydra. Loss options (below ``model.distill_loss.options``)
    may be set whether the config lists them or not: the loss's own schema checks their names."""
    for opt in opts:
        if "=" not in opt:
            raise ConfigError(f"override {opt!r}: give key=value (Detectron2's LazyConfig overrides)")
        key = opt.split("=", 1)[0]
        if key.startswith("+") or key.startswith(LOSS_OPTIONS_KEY + "."):
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
    except ConfigError as err:  # the config's own check (e.g. a ViTDet config on Detectron2 0.6)
        raise ConfigError(f"{config_file}: {err}") from None
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
    """A ``build_teacher`` node's dtype, input size and config (a YAML file, or a lazy model node: its
    class count), checked before anything is built. Its weights are checked when it is built:
    ``--eval-only`` builds no teacher."""
    teacher = cfg.model.get("teacher") if _target(cfg.model) is DistillRCNN else None
    if _target(teacher) is not build_teacher:
        return
    check_dtype(teacher.get("dtype", "float32"), LAZY_KEYS)
    check_input_size(teacher.get("input_size"), LAZY_KEYS)
    config = teacher.get("config")
    student_classes = OmegaConf.select(cfg, "model.roi_heads.num_classes", default=None)
    teacher_classes = OmegaConf.select(config, "roi_heads.num_classes", default=None) if isinstance(
        config, DictConfig) else None
    if isinstance(teacher_classes, int) and isinstance(student_classes, int) and teacher_classes != student_classes:
        raise ConfigError(f"the teacher has {teacher_classes} classes (model.teacher.config.roi_heads.num_classes) but "
                          f"the student's model.roi_heads.num_classes is {student_classes}; distillation needs one "
                          "label space: set one of them")
    if isinstance(config, str) and not resolve_config_path(config, LAZY_KEYS.config).endswith(".py"):
        teacher_cfg = yacs_teacher_cfg(config, list(teacher.get("opts", [])), keys=LAZY_KEYS)
        check_teacher_cfg(teacher_cfg, cfg.model.roi_heads.num_classes, "model.roi_heads.num_classes", LAZY_KEYS)


def check_distill_loss(cfg: DictConfig) -> None:
    """A ``build_distill_loss`` node's options, named by their lazy path, checked before anything is built."""
    node = cfg.model.get("distill_loss") if _target(cfg.model) is DistillRCNN else None
    if _target(node) is build_distill_loss:
        options = OmegaConf.to_container(node.get("options") or OmegaConf.create({}), resolve=True)
        build_distill_loss(options, cfg.model.roi_heads.num_classes, config_prefix=LOSS_OPTIONS_KEY)


def setup(config_file: str, opts: Sequence[str], args=None, checked: bool = False) -> DictConfig:
    """Load and check the config; with ``args``, then Detectron2's ``default_setup`` (logging, the
    config dump, seeding). Every check runs before the dump, so a bad config leaves no run folder; so
    does the resume check (``--resume``). ``checked``: the launching process ran the checks already
    (``tool.launch_checked``), so this process of the run only registers the synthetic data."""
    cfg = load_lazy_config(config_file, opts)
    if checked:
        register_builtin_synthetic()
    else:
        check_distill_loss(cfg)
        check_datasets(cfg)
        check_teacher(cfg)
        check_amp_device(OmegaConf.select(cfg, "train.amp.enabled", default=False),
                         OmegaConf.select(cfg, "train.device", default="cuda"), "train.amp.enabled", "train.device")
    if args is not None:
        if args.resume and not args.eval_only and not checked:
            check_resume_config(cfg, getattr(args, "allow_config_change", False))
        run_setup(cfg, args, cfg.train.output_dir)
    return cfg


def _plain(value: Any) -> Any:
    """A config value as a type a ``weights_only`` checkpoint stores: callables by their import path."""
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if callable(value) and hasattr(value, "__qualname__"):
        return f"{value.__module__}.{value.__qualname__}"
    return repr(value)


def run_fingerprint(cfg: DictConfig, world_size: Optional[int] = None) -> Dict[str, Any]:
    """The flattened, resolved config as plain values, plus the digest of a local teacher weights file
    and the number of processes (default: this process group's)."""
    out = {key: _plain(value) for key, value in flatten(OmegaConf.to_container(cfg, resolve=True)).items()}
    teacher = cfg.model.get("teacher") if _target(cfg.model) is DistillRCNN else None
    if _target(teacher) is build_teacher:
        out.update(teacher_digest(teacher.get("weights")))
    out[PROCESSES] = world_size or comm.get_world_size()
    return out


def check_world_size(cfg: DictConfig, world_size: int) -> None:
    """The training batch splits over the run's processes."""
    total = OmegaConf.select(cfg, "dataloader.train.total_batch_size", default=None)
    if isinstance(total, int):
        check_batch_split(total, world_size, "dataloader.train.total_batch_size")


def check_resume_config(cfg: DictConfig, allow_change: bool = False, world_size: Optional[int] = None) -> None:
    """Before anything is built: refuse to resume ``train.output_dir``'s run under a config (or a number
    of processes, ``world_size``) that changes the result (``ResumeRefused``); nothing to check
    without a checkpoint."""
    path = newest_readable_checkpoint(cfg.train.output_dir)
    if path is not None:
        state = peek_checkpoint(path)
        stored, current = stored_fingerprint(state, run_fingerprint(cfg, world_size))
        check_resume(stored, current, LAZY_RESUME_RULES, state.get("iteration", -1) + 1, path, allow_change)


def continuing_train_loader(loader_cfg: DictConfig, seed: int):
    """``dataloader.train`` whose sampler continues, after a resume, where the checkpoint stopped (see
    ``resume.continuing_train_loader``). Another loader, or one with its own sampler, is built as it is
    and restarts its stream on resume (logged)."""
    if _target(loader_cfg) is not build_detection_train_loader or loader_cfg.get("sampler") is not None:
        logger.warning("dataloader.train is not build_detection_train_loader with its default sampler: a resumed "
                       "run restarts its data stream")
        return instantiate(loader_cfg)
    kwargs = {key: instantiate(value) for key, value in loader_cfg.items() if key != "_target_"}
    dataset = kwargs.pop("dataset")
    per_process = kwargs["total_batch_size"] // comm.get_world_size()
    stream_seed = seed if seed is not None and seed >= 0 else None

    def build(start_iter: int):
        sampler = ContinuingSampler(TrainingSampler(len(dataset), seed=stream_seed), start_iter * per_process)
        return build_detection_train_loader(dataset, sampler=sampler, **kwargs)

    return DeferredLoader(build)


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
    """``dataloader.evaluator`` (COCOEvaluator in this project's configs) on ``dataloader.test``; nothing
    without an evaluator or test data (``dataloader.test.dataset.names=[]``, as DATASETS.TEST ())."""
    if "evaluator" not in cfg.dataloader or not OmegaConf.select(cfg, "dataloader.test.dataset.names", default=None):
        return {}
    results = inference_on_dataset(model, instantiate(cfg.dataloader.test), instantiate(cfg.dataloader.evaluator))
    if comm.is_main_process():
        print_csv_format(results)
    return results


def evaluate_student(cfg: DictConfig, resume: bool = False) -> Dict:
    """The student alone, with ``train.init_checkpoint`` (or, with ``resume``, the run's last checkpoint)."""
    model = instantiate(student_only(cfg.model))
    model.to(cfg.train.device)
    model = create_ddp_model(model, **ddp_kwargs(model))
    AtomicCheckpointer(model, save_dir=cfg.train.output_dir).resume_or_load(cfg.train.init_checkpoint,
                                                                            resume=resume)
    return evaluate_model(cfg, model)


def train(cfg: DictConfig, resume: bool = False, allow_config_change: bool = False) -> None:
    out = cfg.train.output_dir
    fingerprint = run_fingerprint(cfg)  # before the optimizer node holds the built model
    model = instantiate(cfg.model)
    logger.info("Model:\n%s", model)
    model.to(cfg.train.device)
    cfg.optimizer.params.model = model
    optimizer = with_gradient_clipping(instantiate(cfg.optimizer), cfg.train.get("clip_gradients"))
    loader = continuing_train_loader(cfg.dataloader.train, cfg.train.get("seed", -1))
    model = create_ddp_model(model, **ddp_kwargs(model, **cfg.train.ddp))
    trainer = (AMPTrainer if cfg.train.amp.enabled else SimpleTrainer)(model, loader, optimizer)
    history = []
    replica_sync = ReplicaSync(cfg.train.checkpointer.get("period", 0), cfg.train.eval_period, cfg.train.max_iter)

    def checkpoint_state():
        return {"config": fingerprint, "config_changes": history, "rng": replica_sync.rng_states_for_checkpoint(),
                "world_size": comm.get_world_size()}

    # The teacher is not a submodule, so checkpoints hold the student only.
    checkpointer = AtomicCheckpointer(model, out, trainer=trainer, extra_state=checkpoint_state)
    main = comm.is_main_process()
    trainer.register_hooks(insert_before_readers([
        hooks.IterationTimer(),
        hooks.LRScheduler(scheduler=instantiate(cfg.lr_multiplier)),
        hooks.PeriodicCheckpointer(checkpointer, **cfg.train.checkpointer) if main else None,
        hooks.EvalHook(cfg.train.eval_period, lambda: evaluate_model(cfg, model)),
        hooks.PeriodicWriter(default_writers(out, cfg.train.max_iter),
                             period=cfg.train.log_period) if main else None,
        ProgressBar(),
    ], replica_sync))
    loaded = resume_from(checkpointer, out, fingerprint, LAZY_RESUME_RULES, allow_config_change, None, resume)
    if loaded is None:
        checkpointer.load(cfg.train.init_checkpoint, checkpointables=[])
        start_iter = 0
    else:
        history.extend(loaded.config_changes)
        # The checkpoint holds the iteration that finished, so training goes on at the next one.
        start_iter = trainer.iter + 1
        if start_iter >= cfg.train.max_iter:
            replica_sync.sync()  # on every rank: the final checkpoint may be written again below
        rewrite_unreadable_final(checkpointer, out, trainer.iter, cfg.train.max_iter)
    trainer.train(start_iter, cfg.train.max_iter)
