"""Training and evaluation from LazyConfig files, as Detectron2's ``tools/lazyconfig_train_net.py``
does them (``train.*`` keys, ``key=value`` overrides), with what the yacs path (``engine.py``) adds:
checks before any work (override keys, datasets, the teacher's config), the progress bar, student-only
checkpoints and evaluation. ``tools/lazyconfig_train_net.py`` is the command line.

Keys read besides Detectron2's (``configs/common/train.py``): ``train.clip_gradients``, a dict with
``SOLVER.CLIP_GRADIENTS``'s keys in lower case (``enabled``, ``clip_type``, ``clip_value``,
``norm_type``), as Detectron2's lazy path has no gradient clipping of its own; ``train.seed``, which
Detectron2's ``default_setup`` seeds with, also seeds the training data order;
``train.max_bad_box_fraction`` (default 0.01) and ``train.allow_other_teacher_classes`` (default
False), the lazy twins of ``DATASETS.MAX_BAD_BOX_FRACTION`` and ``MODEL.TEACHER.ALLOW_OTHER_CLASSES``
(``data_check.py``, ``class_names.py``); ``train.device`` ``auto``, the GPU when there is one.

Resuming follows the yacs path's rules (``resume.py``): atomic checkpoints that store the config, a
refused resume under a config that changes the result (``--allow-config-change`` records it), a
fallback past damaged checkpoints, restored RNG states, and a data stream that continues where the
checkpoint stopped when ``dataloader.train`` is Detectron2's ``build_detection_train_loader`` without
a sampler of its own.
"""
import copy
import logging
from typing import Any, Dict, List, Optional, Sequence

from detectron2.config import LazyConfig, get_cfg, instantiate
from detectron2.data import build_detection_train_loader
from detectron2.data.samplers import TrainingSampler
from detectron2.engine import AMPTrainer, SimpleTrainer, default_writers, hooks
from detectron2.engine.defaults import create_ddp_model
from detectron2.evaluation import inference_on_dataset, print_csv_format
from detectron2.modeling import GeneralizedRCNN
from detectron2.modeling.roi_heads import CascadeROIHeads
from detectron2.solver.build import maybe_add_gradient_clipping
from detectron2.utils import comm
from detectron2.utils.registry import locate
from omegaconf import DictConfig, OmegaConf

from ..config_io import ConfigError
from ..resume_rules import ResumeRules, check_resume, flatten
from .checkpoint import AtomicCheckpointer, newest_readable_checkpoint
from .class_names import check_teacher_classes, classes_entry, student_classes, teacher_classes
from .data_check import Dataset, DatasetSummary, Needs, check_data
from .datasets import check_dataset_files, check_dataset_registered, register_builtin_synthetic
from .device import device_line, resolve_device
from .engine import LossFaultCheck, ProgressBar, run_setup
from .evaluation import eval_folder, load_for_evaluation, weights_to_evaluate
from .meta_arch import DistillRCNN, build_distill_loss
from .replicas import ReplicaSync, ddp_kwargs, insert_before_readers
from .resume import (PROCESSES, ContinuingSampler, DeferredLoader, peek_checkpoint, resume_from,
                     rewrite_unreadable_final, stored_fingerprint, teacher_digest)
from .teacher import (LAZY_KEYS, build_teacher, check_dtype, check_input_size, check_teacher_cfg, resolve_config_path,
                      yacs_teacher_cfg)
from .tool import DATA_CHECK_SUMMARY, check_batch_split
from .validation import check_amp_device

logger = logging.getLogger(__name__)
_ABSENT = object()
# As the yacs path's RESUME_RULES: only where and how often files are written, what evaluation runs on,
# what the checks accept and the initial weights (a resume loads its checkpoint) may change on resume;
# train.max_iter is the schedule's length.
LAZY_RESUME_RULES = ResumeRules("train.max_iter", ("train.output_dir", "train.checkpointer.", "train.eval_period",
                                                   "train.log_period", "dataloader.test.", "dataloader.evaluator.",
                                                   "train.init_checkpoint", "train.max_bad_box_fraction",
                                                   "train.allow_other_teacher_classes"),
                                "iterations")
DEFAULT_MAX_BAD = 0.01  # train.max_bad_box_fraction when a config does not set it (the YAML default)
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


def settable(cfg: DictConfig, key: str) -> str:
    """How a ``key=value`` override names ``key``: with Hydra's ``+`` when the config lacks it."""
    return key if OmegaConf.select(cfg, key, default=_ABSENT) is not _ABSENT else f"+{key}"


def check_data_keys(cfg: DictConfig) -> Needs:
    """``train.max_bad_box_fraction`` and what the model's heads need of the data (a mask head
    masks, a keypoint head keypoints), which ``dataloader.train.mapper`` must then also load."""
    key = "train.max_bad_box_fraction"
    fraction = cfg.train.get("max_bad_box_fraction", DEFAULT_MAX_BAD)
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 <= fraction <= 1:
        raise ConfigError(f"{key} must be a number in [0, 1] (a fraction of the boxes), got {fraction!r}")
    heads = cfg.model.get("roi_heads") or {}
    masks, keypoints = heads.get("mask_head") is not None, heads.get("keypoint_head") is not None
    mapper = OmegaConf.select(cfg, "dataloader.train.mapper", default=None)
    for needed, flag, what in ((masks, "use_instance_mask", "mask"), (keypoints, "use_keypoint", "keypoint")):
        if needed and mapper is not None and not mapper.get(flag, False):
            raise ConfigError(f"model.roi_heads has a {what} head but dataloader.train.mapper.{flag} is "
                              f"{mapper.get(flag, False)}, so it would train on no {what} targets; set "
                              f"dataloader.train.mapper.{flag}=True")
    return Needs(OmegaConf.select(cfg, "model.roi_heads.num_classes", default=None), float(fraction),
                 settable(cfg, key), "=", masks=masks, masks_key="model.roi_heads.mask_head",
                 masks_off="remove model.roi_heads.mask_head, mask_in_features and mask_pooler", keypoints=keypoints,
                 keypoints_key="model.roi_heads.keypoint_head",
                 keypoints_off="remove model.roi_heads.keypoint_head, keypoint_in_features and keypoint_pooler",
                 classes_key="model.roi_heads.num_classes", teacher_opts_key=LAZY_KEYS.opts)


def _dataset_names(cfg: DictConfig, split: str):
    names = OmegaConf.select(cfg, f"dataloader.{split}.dataset.names", default=None)
    return [names] if isinstance(names, str) else list(names or [])


def check_datasets(cfg: DictConfig, training: bool = True) -> List[DatasetSummary]:
    """Datasets named in ``dataloader.{train,test}.dataset.names`` are registered, have their files and
    the class count of ``model.roi_heads.num_classes``, and pass the data check (``data_check.py``;
    without ``training``, the training sets' class names only). The synthetic data is registered if
    generated. Returns the data check's summaries, for the log."""
    register_builtin_synthetic()
    needs = check_data_keys(cfg)
    datasets = []
    for split in ("train", "test"):
        key = f"dataloader.{split}.dataset.names"
        for name in _dataset_names(cfg, split):
            check_dataset_registered(name, key=key, own_data_hint=OWN_DATA_HINT)
            check_dataset_files(name, key=key)
            datasets.append(Dataset(name, key, train=split == "train"))
    return check_data(datasets, needs, [training or not d.train for d in datasets])


def check_cascade(cfg: DictConfig) -> None:
    """Cascade R-CNN's stages refine one box per proposal: its box predictors regress class-agnostic
    boxes (the YAML path's MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG)."""
    heads = cfg.model.get("roi_heads")
    if _target(heads) is not CascadeROIHeads:
        return
    for k, predictor in enumerate(heads.get("box_predictors") or []):
        if not predictor.get("cls_agnostic_bbox_reg", False):
            raise ConfigError(f"model.roi_heads is CascadeROIHeads, which needs "
                              f"model.roi_heads.box_predictors.{k}.cls_agnostic_bbox_reg=True (each stage refines "
                              "one box per proposal, not one per class)")


def check_teacher(cfg: DictConfig) -> None:
    """A ``build_teacher`` node's dtype, input size and config (a YAML file, or a lazy model node: its
    class count), and its class names where known (``class_names.py``), checked before anything is
    built. Its weights are checked when it is built:
    ``--eval-only`` builds no teacher."""
    teacher = cfg.model.get("teacher") if _target(cfg.model) is DistillRCNN else None
    if _target(teacher) is not build_teacher:
        return
    check_dtype(teacher.get("dtype", "float32"), LAZY_KEYS)
    check_input_size(teacher.get("input_size"), LAZY_KEYS)
    config = teacher.get("config")
    teacher_cfg = None
    student_count = OmegaConf.select(cfg, "model.roi_heads.num_classes", default=None)
    teacher_count = OmegaConf.select(config, "roi_heads.num_classes", default=None) if isinstance(
        config, DictConfig) else None
    if isinstance(teacher_count, int) and isinstance(student_count, int) and teacher_count != student_count:
        raise ConfigError(f"the teacher has {teacher_count} classes (model.teacher.config.roi_heads.num_classes) but "
                          f"the student's model.roi_heads.num_classes is {student_count}; distillation needs one "
                          "label space: set one of them")
    if isinstance(config, str) and not resolve_config_path(config, LAZY_KEYS.config).endswith(".py"):
        teacher_cfg = yacs_teacher_cfg(config, list(teacher.get("opts", [])), keys=LAZY_KEYS)
        check_teacher_cfg(teacher_cfg, cfg.model.roi_heads.num_classes, "model.roi_heads.num_classes", LAZY_KEYS)
    student = student_classes(_dataset_names(cfg, "train"), "dataloader.train.dataset.names")
    teacher_names = teacher_classes(teacher.get("weights"), LAZY_KEYS.weights, teacher_cfg, LAZY_KEYS.config)
    accept = f"{settable(cfg, 'train.allow_other_teacher_classes')}=True"
    check_teacher_classes(student, teacher_names, accept, bool(cfg.train.get("allow_other_teacher_classes", False)))


def check_distill_loss(cfg: DictConfig) -> None:
    """A ``build_distill_loss`` node's options, named by their lazy path, checked before anything is built."""
    node = cfg.model.get("distill_loss") if _target(cfg.model) is DistillRCNN else None
    if _target(node) is build_distill_loss:
        options = OmegaConf.to_container(node.get("options") or OmegaConf.create({}), resolve=True)
        build_distill_loss(options, cfg.model.roi_heads.num_classes, config_prefix=LOSS_OPTIONS_KEY)


def check(config_file: str, opts: Sequence[str], args=None, world_size: int = 1) -> DictConfig:
    """Load and check the config: everything that can fail on a user's config or data, before anything
    is built or written. With ``args`` (the tool's flags), what ``--eval-only`` and ``--resume`` need is
    checked too, for ``world_size`` processes, and the data check's summary lines are left on ``args``
    for the log."""
    cfg = _load(config_file, opts)
    check_distill_loss(cfg)
    check_cascade(cfg)
    eval_only = args is not None and args.eval_only
    summaries = check_datasets(cfg, training=not eval_only)
    if args is not None:
        setattr(args, DATA_CHECK_SUMMARY, [summary.line() for summary in summaries])
    if eval_only:
        weights_to_evaluate(cfg.train.init_checkpoint, "train.init_checkpoint", cfg.train.output_dir,
                            "train.output_dir", args.resume)
    else:
        check_teacher(cfg)
        check_amp_device(OmegaConf.select(cfg, "train.amp.enabled", default=False), cfg.train.device,
                         "train.amp.enabled", "train.device")
    if args is not None and not eval_only:
        check_world_size(cfg, world_size)
        if args.resume:
            check_resume_config(cfg, getattr(args, "allow_config_change", False), world_size)
    return cfg


def _load(config_file: str, opts: Sequence[str]) -> DictConfig:
    cfg = load_lazy_config(config_file, opts)
    cfg.train.device = resolve_device(cfg.train.get("device", "cuda"), "train.device")
    return cfg


def setup(config_file: str, opts: Sequence[str], args, checked: bool = False) -> DictConfig:
    """The config of one process of a run (``check``'s checks, unless the launching process ran them:
    ``checked``, see ``tool.launch_checked``; then the synthetic data is only registered), then
    Detectron2's ``default_setup`` (logging, the config dump, seeding) and the device and data check
    in the log. ``--eval-only`` writes its config and log below the run folder (``evaluation.py``)."""
    if checked:
        cfg = _load(config_file, opts)
        register_builtin_synthetic()
    else:
        cfg = check(config_file, opts, args)
    record = cfg
    if args.eval_only:
        record = copy.deepcopy(cfg)
        record.train.output_dir = eval_folder(cfg.train.output_dir)
    run_setup(record, args, record.train.output_dir)
    logger.info(device_line(cfg.train.device, "train.device"))
    for line in getattr(args, DATA_CHECK_SUMMARY, []):
        logger.info("data check: %s", line)
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
    without test datasets (``dataloader.test.dataset.names=[]``), as the YAML path with ``DATASETS.TEST ()``."""
    if "evaluator" not in cfg.dataloader or not _dataset_names(cfg, "test"):
        return {}
    results = inference_on_dataset(model, instantiate(cfg.dataloader.test), instantiate(cfg.dataloader.evaluator))
    if comm.is_main_process():
        print_csv_format(results)
    return results


def evaluate_student(cfg: DictConfig, resume: bool = False) -> Dict:
    """The student alone, with ``train.init_checkpoint`` (with ``resume``, or without weights, the run's
    newest checkpoint; see ``evaluation.weights_to_evaluate``)."""
    weights = cfg.train.init_checkpoint
    path = weights_to_evaluate(weights, "train.init_checkpoint", cfg.train.output_dir, "train.output_dir", resume)
    model = instantiate(student_only(cfg.model))
    model.to(cfg.train.device)
    model = create_ddp_model(model, **ddp_kwargs(model))
    load_for_evaluation(model, path, "train.init_checkpoint" if path == weights else "the run's checkpoint",
                        cfg.train.output_dir)
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
                "world_size": comm.get_world_size(), **classes_entry(_dataset_names(cfg, "train"))}

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
        LossFaultCheck(cfg.train.log_period),
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
