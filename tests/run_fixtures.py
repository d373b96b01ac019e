"""Tiny end-to-end runs for the fault and bad-input tests: a detection config on a 12-image synthetic
dataset that trains in seconds, damaged copies of files, and a counter of optimizer steps."""
import shutil
from pathlib import Path

import torch

from detection_fixtures import tiny_cfg, write_teacher
from topkd_det.data.synthetic_coco import SyntheticConfig, generate
from topkd_det.detection.datasets import register_synthetic

DET_PREFIX = "faultshapes"
SYNTHETIC_CLASSES = 24
IMAGE_SIZE = 32


def truncated_copy(src: Path, dst: Path, fraction: float = 0.5) -> Path:
    """``dst`` holding the first part of ``src``: a file whose writer was killed."""
    data = Path(src).read_bytes()
    Path(dst).write_bytes(data[: int(len(data) * fraction)])
    return Path(dst)


def det_data(root: Path):
    """A 12-image synthetic dataset registered as faultshapes_{train,val,test} (idempotent)."""
    config = SyntheticConfig(seed=3, num_train=12, num_val=4, num_test=4, image_size=IMAGE_SIZE,
                             min_object_size=0.25, max_object_size=0.4)
    data = generate(root, config, progress=False)
    return register_synthetic(data, name_prefix=DET_PREFIX)


def det_config(tmp: Path, names, method: str = "topkd", max_iter: int = 3) -> Path:
    """A TopKD student (or a plain student for method 'none') of the tiny detector, as a YAML file.

    A checkpoint every iteration, an LR step at iteration 2, no evaluation, SEED 0."""
    cfg = tiny_cfg(SYNTHETIC_CLASSES)
    cfg.DATASETS.TRAIN = (names["train"],)
    cfg.DATASETS.TEST = ()
    cfg.INPUT.MIN_SIZE_TRAIN = (IMAGE_SIZE,)
    cfg.INPUT.MAX_SIZE_TRAIN = IMAGE_SIZE
    cfg.INPUT.MIN_SIZE_TEST = IMAGE_SIZE
    cfg.INPUT.MAX_SIZE_TEST = IMAGE_SIZE
    cfg.SOLVER.IMS_PER_BATCH = 2
    cfg.SOLVER.MAX_ITER = max_iter
    cfg.SOLVER.STEPS = (2,)
    cfg.SOLVER.WARMUP_ITERS = 1
    cfg.SOLVER.CHECKPOINT_PERIOD = 1
    cfg.SEED = 0
    cfg.OUTPUT_DIR = str(tmp / "det_out")
    if method != "none":
        teacher_config, teacher_weights = write_teacher(tmp, num_classes=SYNTHETIC_CLASSES)
        cfg.MODEL.META_ARCHITECTURE = "DistillRCNN"
        cfg.MODEL.TEACHER.CONFIG_FILE = teacher_config
        cfg.MODEL.TEACHER.WEIGHTS = teacher_weights
        cfg.MODEL.DISTILL.METHOD = method
        cfg.MODEL.DISTILL.TOPKD.K = 2
    path = tmp / f"det_{method}.yaml"
    path.write_text(cfg.dump())
    return path


def copy_run(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, dirs_exist_ok=True)
    return dst


class StepCounter:
    """Counts optimizer steps of every SGD (both trainers use torch.optim.SGD or a subclass)."""

    def __init__(self, monkeypatch):
        self.count = 0
        step = torch.optim.SGD.step

        def counting(optimizer, *args, **kwargs):
            self.count += 1
            return step(optimizer, *args, **kwargs)

        monkeypatch.setattr(torch.optim.SGD, "step", counting)
