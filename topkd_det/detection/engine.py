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
from .checkpoint import AtomicCheckpointer
from .config import load_config
from .datasets import (check_class_count, check_dataset_files, check_dataset_registered,
                       register_builtin_synthetic, register_coco_instances_from_cfg)
from .families import SUPPORTED
from .replicas import ddp_kwargs
from .tool import check_batch_split
from .resume import ResumableTrainer, check_resume_config
from .teacher import FrozenTeacher, check_teacher_cfg, resolve_config_path, teacher_cfg_from
from .validation import check_distill_config


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
        return COCOEvaluator(dataset_name, output_dir=output_folder)

    def build_hooks(self):
        return super().build_hooks() + [ProgressBar()]


def register_datasets(cfg: CfgNode) -> List[str]:
    """Register ``DATASETS.COCO_INSTANCES`` and the generated synthetic data (every process of a run
    does); returns the names ``DATASETS.COCO_INSTANCES`` registered."""
    own_names = register_coco_instances_from_cfg(cfg.DATASETS.COCO_INSTANCES)
    register_builtin_synthetic()
    return own_names


def check_datasets(cfg: CfgNode, check_files: bool = True) -> None:
    """Register the datasets (``register_datasets``) and fail before any work if a dataset in
    DATASETS.TRAIN/TEST is not registered, lacks its files (``check_files``), or has another class
    count than the model."""
    own_names = register_datasets(cfg)
    for key in ("TRAIN", "TEST"):
        for name in cfg.DATASETS[key]:
            check_dataset_registered(name, key=f"DATASETS.{key}", own_names=own_names)
            if check_files:
                check_dataset_files(name, key=f"DATASETS.{key}")
            check_class_count(name, f"DATASETS.{key}", cfg.MODEL.ROI_HEADS.NUM_CLASSES)


def check_world_size(cfg: CfgNode, world_size: int) -> None:
    """The batch splits over the run's processes (after Detectron2's ``SOLVER.REFERENCE_WORLD_SIZE``
    scaling)."""
    check_batch_split(DefaultTrainer.auto_scale_workers(cfg, world_size).SOLVER.IMS_PER_BATCH, world_size,
                      "SOLVER.IMS_PER_BATCH")


def check_teacher(cfg: CfgNode) -> None:
    """The teacher's config (file and OPTS) reads, and its class count is the student's: checked on the
    YAML alone, before either model is built."""
    if cfg.MODEL.META_ARCHITECTURE != "DistillRCNN":
        if cfg.MODEL.DISTILL.METHOD != "none":
            raise ConfigError(f"MODEL.DISTILL.METHOD {cfg.MODEL.DISTILL.METHOD} needs MODEL.META_ARCHITECTURE "
                              f"DistillRCNN, not {cfg.MODEL.META_ARCHITECTURE}: {SUPPORTED} can be distilled")
        return
    if resolve_config_path(cfg.MODEL.TEACHER.CONFIG_FILE, "MODEL.TEACHER.CONFIG_FILE").endswith(".py"):
        return  # a LazyConfig teacher: its family and class count are checked when it is built
    check_teacher_cfg(teacher_cfg_from(cfg), cfg.MODEL.ROI_HEADS.NUM_CLASSES)


def setup_cfg(config_file: str, opts: List[str], args=None, coco_datasets: Sequence = (),
              checked: bool = False) -> CfgNode:
    """Load, check and freeze the config; with ``args``, then Detectron2's ``default_setup`` (logging,
    config dump, seeding). ``coco_datasets`` are ``[name, json_file, image_root]`` entries appended to
    ``DATASETS.COCO_INSTANCES``. Every check runs before the dump, so a bad config leaves no run folder.
    ``checked``: the launching process ran the checks already (``tool.launch_checked``), so this
    process of the run only registers the datasets."""
    cfg = load_config(config_file, opts)
    if not checked:
        check_distill_config(cfg)
    cfg.DATASETS.COCO_INSTANCES = list(cfg.DATASETS.COCO_INSTANCES) + [list(entry) for entry in coco_datasets]
    cfg.freeze()
    if checked:
        register_datasets(cfg)
    else:
        check_datasets(cfg)
        if not (args is not None and args.eval_only):  # evaluating the student needs no teacher
            check_teacher(cfg)
    if args is not None:
        if args.resume and not args.eval_only and not checked:
            check_resume_config(cfg, getattr(args, "allow_config_change", False))
        run_setup(cfg, args, cfg.OUTPUT_DIR)
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
    cfg = student_only(cfg)
    model = DistillTrainer.build_model(cfg)
    AtomicCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(weights, resume=resume)
    return DistillTrainer.test(cfg, model)


def evaluate_teacher(cfg: CfgNode):
    return DistillTrainer.test(cfg, FrozenTeacher.from_student_cfg(cfg).model)


def train(cfg: CfgNode, resume: bool = False, allow_config_change: bool = False):
    trainer = DistillTrainer(cfg)
    trainer.allow_config_change = allow_config_change
    trainer.resume_or_load(resume=resume)
    return trainer.train()
