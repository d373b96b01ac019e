"""Training and evaluation entry points in Detectron2's ``DefaultTrainer`` style."""
import logging
import os
import weakref
from typing import List, Sequence

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import CfgNode
from detectron2.engine import AMPTrainer, DefaultTrainer, HookBase, SimpleTrainer, TrainerBase, default_setup
from detectron2.engine.defaults import create_ddp_model
from detectron2.evaluation import COCOEvaluator
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger
from tqdm import tqdm

from ..config_io import ConfigError
from .class_names import check_teacher_classes, student_classes, teacher_classes
from .config import load_config
from .data_check import Dataset, DatasetSummary, Needs, check_data
from .datasets import (check_dataset_files, check_dataset_registered, register_builtin_synthetic,
                       register_coco_instances_from_cfg)
from .device import device_line, resolve_device
from .evaluation import eval_folder, load_for_evaluation, weights_to_evaluate
from .families import SUPPORTED
from .replicas import ddp_kwargs
from .resume import ResumableTrainer, check_resume_config
from .teacher import FrozenTeacher, check_teacher_cfg, resolve_config_path, teacher_cfg_from
from .tool import DATA_CHECK_SUMMARY, check_batch_split
from .validation import check_distill_config

logger = logging.getLogger(__name__)


class ProgressBar(HookBase):
    """A tqdm bar over the iterations of the main process, beside Detectron2's periodic log lines."""

    def before_train(self):
        # Unset on the main process, so that tqdm's own TQDM_DISABLE environment variable applies.
        disable = {} if comm.is_main_process() else {"disable": True}
        self._bar = tqdm(total=self.trainer.max_iter, initial=self.trainer.start_iter, desc="train",
                         unit="it", dynamic_ncols=True, **disable)

    def after_step(self):
        self._bar.update(1)

    def after_train(self):
        self._bar.close()


class LossFaultCheck(HookBase):
    """Acts every ``period`` iterations on what the distillation loss recorded on the device (it reads
    nothing on the host per step): warns about batches skipped under ``NONFINITE skip`` and raises for
    labels outside the loss's classes. A non-finite total under ``error`` stops training at once in
    Detectron2's own metrics writer, which names the iteration and every loss term."""

    def __init__(self, period: int):
        self.period = period

    def after_step(self):
        step = self.trainer.iter + 1
        if step % self.period and step != self.trainer.max_iter:
            return
        model = self.trainer.model
        loss = getattr(getattr(model, "module", model), "distill_loss", None)
        if loss is not None:
            loss.check_faults(lambda progress: f"iteration {int(progress)}")


class DistillTrainer(ResumableTrainer, DefaultTrainer):
    """``DefaultTrainer`` with COCO evaluation, a progress bar and safe resume (``ResumableTrainer``,
    which also keeps the ranks' copies of the student one model); the model comes from
    ``MODEL.META_ARCHITECTURE`` (``DistillRCNN`` for distillation, ``GeneralizedRCNN`` otherwise).

    ``__init__`` is ``DefaultTrainer``'s, from the same public pieces, except for the DDP wrapper:
    Detectron2 passes DDP ``device_ids=[local rank]`` whatever the device, which DDP refuses for a
    model on the CPU (gloo workers). The inner ``SimpleTrainer``/``AMPTrainer`` is ``self.loop``.
    """

    def __init__(self, cfg):
        TrainerBase.__init__(self)
        if not logging.getLogger("detectron2").isEnabledFor(logging.INFO):
            setup_logger()
        cfg = DefaultTrainer.auto_scale_workers(cfg, comm.get_world_size())
        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(cfg)
        model = create_ddp_model(model, **ddp_kwargs(model, broadcast_buffers=False))
        self.loop = (AMPTrainer if cfg.SOLVER.AMP.ENABLED else SimpleTrainer)(model, data_loader, optimizer)
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = DetectionCheckpointer(model, cfg.OUTPUT_DIR, trainer=weakref.proxy(self))
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.register_hooks(self.build_hooks())

    model = property(lambda self: self.loop.model)
    data_loader = property(lambda self: self.loop.data_loader)
    optimizer = property(lambda self: self.loop.optimizer)

    def run_step(self):
        self.loop.iter = self.iter
        self.loop.run_step()

    def state_dict(self):
        state = TrainerBase.state_dict(self)
        state["_trainer"] = self.loop.state_dict()  # the optimizer (and grad scaler), as Detectron2 main stores it
        return state

    def load_state_dict(self, state_dict):
        TrainerBase.load_state_dict(self, state_dict)
        if "_trainer" in state_dict:
            self.loop.load_state_dict(state_dict["_trainer"])
        elif "optimizer" in state_dict:  # written on Detectron2 0.6 by this project before the loop's own state
            self.optimizer.load_state_dict(state_dict["optimizer"])

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        # The model's tasks, not those its predictions happen to show: a model that detects nothing yet
        # still reports its mask AP (as NaN) instead of leaving the key out.
        tasks = ("bbox",) + (("segm",) if cfg.MODEL.MASK_ON else ()) + (("keypoints",) if cfg.MODEL.KEYPOINT_ON else ())
        return COCOEvaluator(dataset_name, tasks=tasks, output_dir=output_folder)

    def build_hooks(self):
        # After the writers (Detectron2 puts them last), as in lazy_engine.train.
        return super().build_hooks() + [ProgressBar(), LossFaultCheck(20)]


def register_datasets(cfg: CfgNode) -> List[str]:
    """Register ``DATASETS.COCO_INSTANCES`` and the generated synthetic data (every process of a run
    does); returns the names ``DATASETS.COCO_INSTANCES`` registered."""
    own_names = register_coco_instances_from_cfg(cfg.DATASETS.COCO_INSTANCES)
    register_builtin_synthetic()
    return own_names


def data_needs(cfg: CfgNode) -> Needs:
    return Needs(cfg.MODEL.ROI_HEADS.NUM_CLASSES, cfg.DATASETS.MAX_BAD_BOX_FRACTION,
                 "DATASETS.MAX_BAD_BOX_FRACTION", masks=cfg.MODEL.MASK_ON, keypoints=cfg.MODEL.KEYPOINT_ON)


def check_datasets(cfg: CfgNode, check_files: bool = True, training: bool = True) -> List[DatasetSummary]:
    """Register the datasets (``register_datasets``) and fail before any work if a dataset in
    DATASETS.TRAIN/TEST is not registered, lacks its files (``check_files``), has another class count
    than the model, or fails the data check (``data_check.py``; without ``training``, as for
    ``--eval-only``, the training sets' class names only). Returns the data check's summaries."""
    own_names = register_datasets(cfg)
    datasets = []
    for key in ("TRAIN", "TEST"):
        for name in cfg.DATASETS[key]:
            check_dataset_registered(name, key=f"DATASETS.{key}", own_names=own_names)
            if check_files:
                check_dataset_files(name, key=f"DATASETS.{key}")
            datasets.append(Dataset(name, f"DATASETS.{key}", train=key == "TRAIN"))
    return check_data(datasets, data_needs(cfg), [check_files and (training or not d.train) for d in datasets])


def check_world_size(cfg: CfgNode, world_size: int) -> None:
    """The batch splits over the run's processes (after Detectron2's ``SOLVER.REFERENCE_WORLD_SIZE``
    scaling)."""
    check_batch_split(DefaultTrainer.auto_scale_workers(cfg, world_size).SOLVER.IMS_PER_BATCH, world_size,
                      "SOLVER.IMS_PER_BATCH")


def check_teacher(cfg: CfgNode) -> None:
    """The teacher's config (file and OPTS) reads, and its class count is the student's, and its class
    names where known (``class_names.py``): checked on the YAML alone, before either model is built."""
    if cfg.MODEL.META_ARCHITECTURE != "DistillRCNN":
        if cfg.MODEL.DISTILL.METHOD != "none":
            raise ConfigError(f"MODEL.DISTILL.METHOD {cfg.MODEL.DISTILL.METHOD} needs MODEL.META_ARCHITECTURE "
                              f"DistillRCNN, not {cfg.MODEL.META_ARCHITECTURE}: {SUPPORTED} can be distilled")
        return
    teacher_cfg = None
    if not resolve_config_path(cfg.MODEL.TEACHER.CONFIG_FILE, "MODEL.TEACHER.CONFIG_FILE").endswith(".py"):
        # A LazyConfig teacher's family and class count are checked when it is built.
        teacher_cfg = teacher_cfg_from(cfg)
        check_teacher_cfg(teacher_cfg, cfg.MODEL.ROI_HEADS.NUM_CLASSES)
    teacher = teacher_classes(cfg.MODEL.TEACHER.WEIGHTS, "MODEL.TEACHER.WEIGHTS", teacher_cfg,
                              "MODEL.TEACHER.CONFIG_FILE")
    check_teacher_classes(student_classes(cfg.DATASETS.TRAIN, "DATASETS.TRAIN"), teacher,
                          "MODEL.TEACHER.ALLOW_OTHER_CLASSES True", cfg.MODEL.TEACHER.ALLOW_OTHER_CLASSES)


def _evaluates_teacher(args) -> bool:
    return args is not None and getattr(args, "eval_teacher", False)  # a flag of tools/train_net.py only


def _record_folder(cfg: CfgNode, args) -> CfgNode:
    """The config whose OUTPUT_DIR ``default_setup`` writes config.yaml and log.txt into: an
    evaluation's own folder below the run, so that it never rewrites the run's config.yaml."""
    if not (args.eval_only or _evaluates_teacher(args)):
        return cfg
    record = cfg.clone()
    record.defrost()
    record.OUTPUT_DIR = eval_folder(cfg.OUTPUT_DIR, teacher=_evaluates_teacher(args))
    record.freeze()
    return record


def check_cfg(config_file: str, opts: List[str], args=None, coco_datasets: Sequence = (),
              world_size: int = 1) -> CfgNode:
    """Load, check and freeze the config: everything that can fail on a user's config or data, before
    anything is built or written. ``coco_datasets`` are ``[name, json_file, image_root]`` entries
    appended to ``DATASETS.COCO_INSTANCES``. With ``args`` (the tools' flags), what ``--eval-only``,
    ``--eval-teacher`` and ``--resume`` need is checked too, for ``world_size`` processes, and the data
    check's summary lines are left on ``args`` for the log."""
    cfg = _load(config_file, opts, coco_datasets)
    check_distill_config(cfg)
    evaluates = args is not None and (args.eval_only or _evaluates_teacher(args))
    summaries = check_datasets(cfg, training=not evaluates)
    if args is not None:
        setattr(args, DATA_CHECK_SUMMARY, [summary.line() for summary in summaries])
    if evaluates and not _evaluates_teacher(args):  # evaluating the student needs no teacher, but weights
        weights_to_evaluate(cfg.MODEL.WEIGHTS, "MODEL.WEIGHTS", cfg.OUTPUT_DIR, "OUTPUT_DIR", args.resume)
    else:
        check_teacher(cfg)
    if args is not None and not evaluates:
        check_world_size(cfg, world_size)
        if args.resume:
            check_resume_config(cfg, getattr(args, "allow_config_change", False), world_size)
    return cfg


def _load(config_file: str, opts: List[str], coco_datasets: Sequence) -> CfgNode:
    cfg = load_config(config_file, opts)
    cfg.MODEL.DEVICE = resolve_device(cfg.MODEL.DEVICE, "MODEL.DEVICE")
    cfg.DATASETS.COCO_INSTANCES = list(cfg.DATASETS.COCO_INSTANCES) + [list(entry) for entry in coco_datasets]
    cfg.freeze()
    return cfg


def setup_cfg(config_file: str, opts: List[str], args, coco_datasets: Sequence = (),
              checked: bool = False) -> CfgNode:
    """The config of one process of a run (``check_cfg``'s checks, unless the launching process ran them:
    ``checked``, see ``tool.launch_checked``; then the datasets are only registered), then Detectron2's
    ``default_setup`` (logging, config dump, seeding) and the device and data check in the log. An
    evaluation (``--eval-only``, ``--eval-teacher``) writes its config and log below the run folder
    (``evaluation.py``), never over the run's own."""
    if checked:
        cfg = _load(config_file, opts, coco_datasets)
        register_datasets(cfg)
    else:
        cfg = check_cfg(config_file, opts, args, coco_datasets)
    record = _record_folder(cfg, args)
    run_setup(record, args, record.OUTPUT_DIR)
    logger.info(device_line(cfg.MODEL.DEVICE, "MODEL.DEVICE"))
    for line in getattr(args, DATA_CHECK_SUMMARY, []):
        logger.info("data check: %s", line)
    return cfg


def run_setup(cfg, args, output_dir: str) -> None:
    """Detectron2's ``default_setup`` (logs, the config dump, seeding), with this project's log lines
    (``topkd_det.*``) in the same console and ``log.txt`` files."""
    default_setup(cfg, args)
    setup_logger(output_dir, distributed_rank=comm.get_rank(), name="topkd_det")


def student_only(cfg: CfgNode) -> CfgNode:
    """The config of the student as a plain model of its family: what inference and evaluation run."""
    cfg = cfg.clone()
    cfg.defrost()
    cfg.MODEL.META_ARCHITECTURE = "GeneralizedRCNN"
    cfg.freeze()
    return cfg


def evaluate_student(cfg: CfgNode, weights: str, resume: bool = False):
    """The student alone with ``weights`` (``--resume``: the run's newest checkpoint; no weights: the
    run's newest checkpoint, see ``evaluation.weights_to_evaluate``)."""
    path = weights_to_evaluate(weights, "MODEL.WEIGHTS", cfg.OUTPUT_DIR, "OUTPUT_DIR", resume)
    cfg = student_only(cfg)
    model = DistillTrainer.build_model(cfg)
    load_for_evaluation(model, path, "MODEL.WEIGHTS" if path == weights else "the run's checkpoint", cfg.OUTPUT_DIR)
    return DistillTrainer.test(cfg, model)


def evaluate_teacher(cfg: CfgNode):
    """The teacher alone, its results in ``OUTPUT_DIR/teacher_eval/<dataset>/``, beside the student's
    ``OUTPUT_DIR/inference/``."""
    folder = eval_folder(cfg.OUTPUT_DIR, teacher=True)
    evaluators = [DistillTrainer.build_evaluator(cfg, name, os.path.join(folder, name)) for name in cfg.DATASETS.TEST]
    return DistillTrainer.test(cfg, FrozenTeacher.from_student_cfg(cfg).model, evaluators)


def train(cfg: CfgNode, resume: bool = False, allow_config_change: bool = False):
    trainer = DistillTrainer(cfg)
    trainer.allow_config_change = allow_config_change
    trainer.resume_or_load(resume=resume)
    return trainer.train()
