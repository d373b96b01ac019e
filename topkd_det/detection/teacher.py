"""A frozen Detectron2 teacher that scores given ROIs with its box head, and nothing else."""
import contextlib
import importlib.util
import os
from typing import Dict, List

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import CfgNode, get_cfg
from detectron2.modeling import build_model
from detectron2.modeling.roi_heads import StandardROIHeads
from detectron2.structures import Boxes, ImageList

from ..config_io import ConfigError, merge_config

ZOO_PREFIX = "zoo:"
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_LIST_AT_MOST = 8


def model_zoo_config_file(name: str) -> str:
    """The path of a model-zoo config shipped inside the installed Detectron2 package.

    ``detectron2.model_zoo`` is not imported: on official Detectron2 builds it still needs
    ``pkg_resources``, which setuptools >= 82 no longer has. ``find_spec`` locates the subpackage's
    folder without running it.
    """
    spec = importlib.util.find_spec("detectron2.model_zoo")
    folders = list(spec.submodule_search_locations or []) if spec else []
    for folder in folders:
        path = os.path.join(folder, "configs", name)
        if os.path.isfile(path):
            return path
    raise ConfigError(
        f"MODEL.TEACHER.CONFIG_FILE {ZOO_PREFIX}{name}: no such model-zoo config in the installed Detectron2 "
        f"({', '.join(os.path.join(f, 'configs') for f in folders) or 'no model_zoo folder'}); "
        "names look like COCO-Detection/faster_rcnn_R_101_FPN_3x.yaml"
    )


def teacher_cfg_from(student_cfg: CfgNode) -> CfgNode:
    """The teacher's own config: ``MODEL.TEACHER.CONFIG_FILE``, then ``MODEL.TEACHER.OPTS``, then
    ``MODEL.TEACHER.WEIGHTS`` and the student's device. Cheap: nothing is built or read but YAML."""
    from .config import add_topkd_config  # the teacher may use this project's backbones too

    path = student_cfg.MODEL.TEACHER.CONFIG_FILE
    if not path:
        raise ConfigError("MODEL.TEACHER.CONFIG_FILE is empty: set it to the teacher's Detectron2 config "
                          "(a path, or zoo:COCO-Detection/faster_rcnn_R_101_FPN_3x.yaml)")
    if path.startswith(ZOO_PREFIX):
        path = model_zoo_config_file(path[len(ZOO_PREFIX):])
    cfg = get_cfg()
    add_topkd_config(cfg)
    merge_config(cfg, path, student_cfg.MODEL.TEACHER.OPTS, file_key="MODEL.TEACHER.CONFIG_FILE",
                 opts_key="MODEL.TEACHER.OPTS (the teacher's own KEY VALUE overrides)")
    cfg.MODEL.WEIGHTS = student_cfg.MODEL.TEACHER.WEIGHTS
    cfg.MODEL.DEVICE = student_cfg.MODEL.DEVICE
    cfg.MODEL.META_ARCHITECTURE = "GeneralizedRCNN"
    cfg.freeze()
    return cfg


def _shorten(keys: List[str]) -> str:
    shown = ", ".join(sorted(keys)[:_LIST_AT_MOST])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > _LIST_AT_MOST else "")


class TeacherWeightsError(ValueError):
    """Teacher weights that cannot be read or do not fit the teacher's config."""


class _KeyReportingCheckpointer(DetectionCheckpointer):
    """Keeps the incompatible keys of the last load instead of only logging them.

    ``_load_model`` is the hook fvcore's ``Checkpointer`` documents for subclasses; loading itself goes
    through the public ``load()``, which Detectron2 0.6 and main both drive the same way (file
    formats, model-zoo conversions, URL handling).
    """

    incompatible = None

    def _load_model(self, checkpoint):
        self.incompatible = super()._load_model(checkpoint)
        return self.incompatible


def load_teacher_weights(model: torch.nn.Module, weights: str) -> None:
    """Load strictly: a teacher with missing or unexpected weights would distill noise."""
    if not weights:
        raise ConfigError("MODEL.TEACHER.WEIGHTS is empty: a teacher needs trained weights")
    if "://" not in weights and not os.path.isfile(weights):
        raise ConfigError(f"MODEL.TEACHER.WEIGHTS: no such file {weights!r}")
    checkpointer = _KeyReportingCheckpointer(model)
    try:
        checkpointer.load(weights, checkpointables=[])
    except Exception as err:  # torch/pickle/zip raise many types for a damaged or foreign file
        raise TeacherWeightsError(
            f"MODEL.TEACHER.WEIGHTS {weights!r} could not be read ({type(err).__name__}: {err}); the file is "
            "damaged, truncated or not a Detectron2/torch checkpoint: download or train it again"
        ) from None
    incompatible = checkpointer.incompatible
    parts = []
    if incompatible is None:
        parts.append("the file holds no model weights")
    else:
        shapes = [f"{k} {tuple(a)} vs model {tuple(b)}" for k, a, b in incompatible.incorrect_shapes]
        for what, keys in (("missing keys", list(incompatible.missing_keys)),
                           ("unexpected keys", list(incompatible.unexpected_keys)),
                           ("shape mismatches", shapes)):
            if keys:
                parts.append(f"{what}: {_shorten(keys)}")
    if parts:
        raise TeacherWeightsError(f"MODEL.TEACHER.WEIGHTS {weights!r} does not match MODEL.TEACHER.CONFIG_FILE "
                                  "(and MODEL.TEACHER.OPTS): " + "; ".join(parts))


class FrozenTeacher:
    """Holds a teacher detector outside the student's module tree.

    Not an ``nn.Module`` on purpose: the student's checkpoints, optimizer and DDP wrapper never see
    the teacher, so a saved model is a plain student (resume rebuilds the teacher from its weights).
    """

    def __init__(self, model: torch.nn.Module, input_format: str, student_format: str, dtype: str = "float32"):
        if dtype not in _DTYPES:
            raise ValueError(f"MODEL.TEACHER.DTYPE must be one of {sorted(_DTYPES)}, got {dtype!r}")
        roi_heads = getattr(model, "roi_heads", None)
        if not isinstance(roi_heads, StandardROIHeads) or not hasattr(roi_heads.box_predictor, "cls_score"):
            raise ValueError("the teacher must be a Faster R-CNN with StandardROIHeads and a FastRCNNOutputLayers "
                             f"box predictor; got ROI heads {type(roi_heads).__name__}")
        formats = {input_format, student_format}
        if input_format != student_format and formats != {"RGB", "BGR"}:
            raise ValueError(f"teacher INPUT.FORMAT {input_format!r} and student INPUT.FORMAT {student_format!r} "
                             "cannot be converted into each other (only RGB <-> BGR)")
        self.model = model.eval().requires_grad_(False)
        self.flip_channels = input_format != student_format
        self.dtype = _DTYPES[dtype]

    @classmethod
    def from_student_cfg(cls, student_cfg: CfgNode) -> "FrozenTeacher":
        cfg = teacher_cfg_from(student_cfg)
        model = build_model(cfg)
        load_teacher_weights(model, cfg.MODEL.WEIGHTS)
        return cls(model, cfg.INPUT.FORMAT, student_cfg.INPUT.FORMAT, student_cfg.MODEL.TEACHER.DTYPE)

    @property
    def num_classes(self) -> int:
        return self.model.roi_heads.num_classes

    def _autocast(self):
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.model.device.type, dtype=self.dtype)

    @torch.no_grad()
    def box_logits(self, batched_inputs: List[Dict], boxes: List[Boxes]) -> torch.Tensor:
        """Class logits (R, C+1) of the teacher's box head on the given per-image boxes, in the
        coordinates of the images in ``batched_inputs`` (the student's resized inputs)."""
        m = self.model
        images = [x["image"].to(m.device) for x in batched_inputs]
        if self.flip_channels:
            images = [x.flip(0) for x in images]
        images = [(x - m.pixel_mean) / m.pixel_std for x in images]
        images = ImageList.from_tensors(images, m.backbone.size_divisibility)
        heads = m.roi_heads
        with self._autocast():
            features = m.backbone(images.tensor)
            pooled = heads.box_pooler([features[f] for f in heads.box_in_features], boxes)
            # Only the class scores are needed, so the box-regression layer is skipped.
            scores = heads.box_predictor.cls_score(torch.flatten(heads.box_head(pooled), 1))
        return scores.float()

    def apply(self, fn) -> None:
        """Follow the student's ``.to()/.cuda()``."""
        self.model._apply(fn)
