"""Training and evaluation entry points in Detectron2's ``DefaultTrainer`` style."""
import os
from typing import List, Sequence

from detectron2.config import CfgNode
from detectron2.engine import DefaultTrainer, HookBase, default_setup
from detectron2.evaluation import COCOEvaluator
from detectron2.utils import comm
from tqdm import tqdm

from ..config_io import ConfigError
from .checkpoint import AtomicCheckpointer
from .config import load_config
from .datasets import (check_class_count, check_dataset_files, check_dataset_registered,
                       register_builtin_synthetic, register_coco_instances_from_cfg)
from .families import SUPPORTED
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
    """``DefaultTrainer`` with COCO evaluation, a progress bar and safe resume (``ResumableTrainer``);
    the model comes from ``MODEL.META_ARCHITECTURE`` (``DistillRCNN`` for distillation,
    ``GeneralizedRCNN`` otherwise)."""

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        return COCOEvaluator(dataset_name, output_dir=output_folder)

    def build_hooks(self):
        # After the writers (Detectron2 puts them last), as in lazy_engine.train.
        return super().build_hooks() + [ProgressBar(), LossFaultCheck(20)]


def check_datasets(cfg: CfgNode, check_files: bool = True) -> None:
    """Register ``DATASETS.COCO_INSTANCES`` and fail before any work if a dataset in DATASETS.TRAIN/TEST
    is not registered, lacks its files (``check_files``), or has another class count than the model."""
    own_names = register_coco_instances_from_cfg(cfg.DATASETS.COCO_INSTANCES)
    register_builtin_synthetic()
    for key in ("TRAIN", "TEST"):
        for name in cfg.DATASETS[key]:
            check_dataset_registered(name, key=f"DATASETS.{key}", own_names=own_names)
            if check_files:
                check_dataset_files(name, key=f"DATASETS.{key}")
            check_class_count(name, f"DATASETS.{key}", cfg.MODEL.ROI_HEADS.NUM_CLASSES)


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


def setup_cfg(config_file: str, opts: List[str], args=None, coco_datasets: Sequence = ()) -> CfgNode:
    """Load, check and freeze the config; with ``args``, then Detectron2's ``default_setup`` (logging,
    config dump, seeding). ``coco_datasets`` are ``[name, json_file, image_root]`` entries appended to
    ``DATASETS.COCO_INSTANCES``. Every check runs before the dump, so a bad config leaves no run folder."""
    cfg = load_config(config_file, opts)
    check_distill_config(cfg)
    cfg.DATASETS.COCO_INSTANCES = list(cfg.DATASETS.COCO_INSTANCES) + [list(entry) for entry in coco_datasets]
    cfg.freeze()
    check_datasets(cfg)
    if not (args is not None and args.eval_only):  # evaluating the student needs no teacher
        check_teacher(cfg)
    if args is not None:
        if args.resume and not args.eval_only:
            check_resume_config(cfg, getattr(args, "allow_config_change", False))
        default_setup(cfg, args)
    return cfg


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
