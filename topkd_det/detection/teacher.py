"""A frozen Detectron2 teacher that scores given ROIs with its box head, and nothing else."""
import contextlib
import os
from typing import Dict, List

import torch
from detectron2 import model_zoo
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import CfgNode, get_cfg
from detectron2.modeling import build_model
from detectron2.modeling.roi_heads import StandardROIHeads
from detectron2.structures import Boxes, ImageList
from detectron2.utils.file_io import PathManager

ZOO_PREFIX = "zoo:"
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_LIST_AT_MOST = 8


def teacher_cfg_from(student_cfg: CfgNode) -> CfgNode:
    """The teacher's own config, built from ``MODEL.TEACHER.CONFIG_FILE`` + ``MODEL.TEACHER.WEIGHTS``."""
    from .config import add_topkd_config  # the teacher may use this project's backbones too

    path = student_cfg.MODEL.TEACHER.CONFIG_FILE
    if not path:
        raise ValueError("MODEL.TEACHER.CONFIG_FILE is empty: set it to the teacher's Detectron2 config "
                         "(a path, or zoo:COCO-Detection/faster_rcnn_R_101_FPN_3x.yaml)")
    if path.startswith(ZOO_PREFIX):
        path = model_zoo.get_config_file(path[len(ZOO_PREFIX):])
    elif not os.path.isfile(path):
        raise FileNotFoundError(f"MODEL.TEACHER.CONFIG_FILE: no such file {path!r}")
    cfg = get_cfg()
    add_topkd_config(cfg)
    cfg.merge_from_file(path)
    cfg.MODEL.WEIGHTS = student_cfg.MODEL.TEACHER.WEIGHTS
    cfg.MODEL.DEVICE = student_cfg.MODEL.DEVICE
    cfg.MODEL.META_ARCHITECTURE = "GeneralizedRCNN"
    cfg.freeze()
    return cfg


def _shorten(keys: List[str]) -> str:
    shown = ", ".join(sorted(keys)[:_LIST_AT_MOST])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > _LIST_AT_MOST else "")


def load_teacher_weights(model: torch.nn.Module, weights: str) -> None:
    """Load strictly: a teacher with missing or unexpected weights would distill noise."""
    if not weights:
        raise ValueError("MODEL.TEACHER.WEIGHTS is empty: a teacher needs trained weights")
    if "://" not in weights and not os.path.isfile(weights):
        raise FileNotFoundError(f"MODEL.TEACHER.WEIGHTS: no such file {weights!r}")
    checkpointer = DetectionCheckpointer(model)
    # _load_file/_load_model are fvcore's documented extension points; they handle .pkl (model
    # zoo, converted) and .pth files, and report incompatible keys instead of only logging them.
    checkpoint = checkpointer._load_file(PathManager.get_local_path(weights))
    incompatible = checkpointer._load_model(checkpoint)
    missing = list(incompatible.missing_keys)
    unexpected = list(incompatible.unexpected_keys)
    shapes = [f"{k} {tuple(a)} vs model {tuple(b)}" for k, a, b in incompatible.incorrect_shapes]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing keys: {_shorten(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {_shorten(unexpected)}")
        if shapes:
            parts.append(f"shape mismatches: {_shorten(shapes)}")
        raise ValueError(f"MODEL.TEACHER.WEIGHTS {weights!r} does not match MODEL.TEACHER.CONFIG_FILE: "
                         + "; ".join(parts))


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
