"""A frozen Detectron2 teacher that scores given ROIs with its box heads, and nothing else."""
import importlib.util
import os
from collections import abc
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import CfgNode, LazyConfig, get_cfg, instantiate
from detectron2.data.transforms import ResizeShortestEdge
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances

from ..config_io import ConfigError, merge_config
from .families import SUPPORTED, check_family_config, family_name, teacher_stages

ZOO_PREFIX = "zoo:"
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_LIST_AT_MOST = 8


def model_zoo_config_file(name: str, key: str = "model-zoo config") -> str:
    """The path of a model-zoo config shipped inside the installed Detectron2 package, e.g.
    ``COCO-Detection/faster_rcnn_R_101_FPN_3x.yaml`` or ``common/models/mask_rcnn_fpn.py``.

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
        f"{key} {ZOO_PREFIX}{name}: no such model-zoo config in the installed Detectron2 "
        f"({', '.join(os.path.join(f, 'configs') for f in folders) or 'no model_zoo folder'}); "
        "names look like COCO-Detection/faster_rcnn_R_101_FPN_3x.yaml"
    )


@dataclass(frozen=True)
class TeacherKeys:
    """Where the teacher's settings were given, for error messages: yacs keys or lazy-config keys."""

    config: str = "MODEL.TEACHER.CONFIG_FILE"
    weights: str = "MODEL.TEACHER.WEIGHTS"
    dtype: str = "MODEL.TEACHER.DTYPE"
    opts: str = "MODEL.TEACHER.OPTS"
    input_size: str = "MODEL.TEACHER.INPUT_SIZE"


YACS_KEYS = TeacherKeys()
LAZY_KEYS = TeacherKeys("model.teacher.config", "model.teacher.weights", "model.teacher.dtype", "model.teacher.opts",
                        "model.teacher.input_size")


def resolve_config_path(path: str, key: str) -> str:
    """A config path, with ``zoo:<name>`` resolved to the installed model zoo's file."""
    if not path:
        raise ConfigError(f"{key} is empty: give a Detectron2 config file "
                          "(a path, or zoo:COCO-Detection/faster_rcnn_R_101_FPN_3x.yaml)")
    if path.startswith(ZOO_PREFIX):
        return model_zoo_config_file(path[len(ZOO_PREFIX):], key)
    if not os.path.isfile(path):
        raise ConfigError(f"{key}: no such file {path!r}")
    return path


def yacs_teacher_cfg(config_file: str, opts: Sequence = (), weights: str = "", device: str = "cpu",
                     keys: TeacherKeys = YACS_KEYS) -> CfgNode:
    """The teacher's own yacs config: its file, then ``opts`` (KEY VALUE pairs), then ``weights`` and
    ``device``. Cheap: nothing is built or read but YAML. A DistillRCNN config stands for its student."""
    from .config import add_topkd_config  # the teacher may use this project's backbones too

    cfg = get_cfg()
    add_topkd_config(cfg)
    merge_config(cfg, resolve_config_path(config_file, keys.config), opts, file_key=keys.config,
                 opts_key=f"{keys.opts} (the teacher's own KEY VALUE overrides)")
    cfg.MODEL.WEIGHTS = weights
    cfg.MODEL.DEVICE = device
    if cfg.MODEL.META_ARCHITECTURE == "DistillRCNN":
        cfg.MODEL.META_ARCHITECTURE = "GeneralizedRCNN"
    cfg.freeze()
    return cfg


def teacher_cfg_from(student_cfg: CfgNode) -> CfgNode:
    """The teacher's config named by a student's ``MODEL.TEACHER.*`` keys, on the student's device."""
    t = student_cfg.MODEL.TEACHER
    return yacs_teacher_cfg(t.CONFIG_FILE, t.OPTS, t.WEIGHTS, student_cfg.MODEL.DEVICE)


def check_teacher_cfg(teacher_cfg: CfgNode, student_classes: int, classes_key: str = "MODEL.ROI_HEADS.NUM_CLASSES",
                      keys: TeacherKeys = YACS_KEYS) -> None:
    """A YAML teacher checked on its config alone, before either model is built: a two-stage
    R-CNN whose class count is the student's (``classes_key`` names where the student's is set)."""
    arch = teacher_cfg.MODEL.META_ARCHITECTURE
    if arch != "GeneralizedRCNN":
        raise ConfigError(f"{keys.config} is a {arch}, whose class logits are not per ROI: the teacher must be "
                          f"one of {SUPPORTED}")
    teacher_classes = teacher_cfg.MODEL.ROI_HEADS.NUM_CLASSES
    if teacher_classes != student_classes:
        raise ConfigError(f"the teacher has {teacher_classes} classes (its MODEL.ROI_HEADS.NUM_CLASSES) but the "
                          f"student's {classes_key} is {student_classes}; distillation needs one label space: set "
                          f"the teacher's with {keys.opts} (e.g. ['MODEL.ROI_HEADS.NUM_CLASSES', {student_classes}]) "
                          "or the student's")
    check_family_config(teacher_cfg, "the teacher's ", f"set it in {keys.config} or with {keys.opts}")


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


def load_teacher_weights(model: torch.nn.Module, weights: str, keys: TeacherKeys = YACS_KEYS) -> None:
    """Load strictly: a teacher with missing or unexpected weights would distill noise."""
    check_weights_path(weights, keys)
    checkpointer = _KeyReportingCheckpointer(model)
    try:
        checkpointer.load(weights, checkpointables=[])
    except Exception as err:  # torch/pickle/zip raise many types for a damaged or foreign file
        raise TeacherWeightsError(
            f"{keys.weights} {weights!r} could not be read ({type(err).__name__}: {err}); the file is "
            "damaged, truncated or not a Detectron2/torch checkpoint: download or train it again"
        ) from None
    incompatible = checkpointer.incompatible
    parts = []
    if incompatible is None:
        parts.append("the file holds no model weights")
    else:
        shapes = [f"{k} {tuple(a)} vs model {tuple(b)}" for k, a, b in incompatible.incorrect_shapes]
        for what, names in (("missing keys", list(incompatible.missing_keys)),
                            ("unexpected keys", list(incompatible.unexpected_keys)),
                            ("shape mismatches", shapes)):
            if names:
                parts.append(f"{what}: {_shorten(names)}")
    if parts:
        raise TeacherWeightsError(f"{keys.weights} {weights!r} does not match {keys.config} "
                                  f"(and {keys.opts}): " + "; ".join(parts))


def check_weights_path(weights: str, keys: TeacherKeys) -> None:
    if not weights:
        raise ConfigError(f"{keys.weights} is empty: a teacher needs trained weights")
    if "://" not in weights and not os.path.isfile(weights):
        raise ConfigError(f"{keys.weights}: no such file {weights!r}")


def check_dtype(dtype: str, keys: TeacherKeys) -> torch.dtype:
    if dtype not in _DTYPES:
        raise ConfigError(f"{keys.dtype} must be one of {sorted(_DTYPES)}, got {dtype!r}")
    return _DTYPES[dtype]


def check_input_size(input_size, keys: TeacherKeys) -> Optional[Tuple[int, int]]:
    """``(short_edge, max_size)`` as ``ResizeShortestEdge`` takes them, or None (empty or None given):
    the teacher sees the student's images as they are."""
    if input_size is None:
        return None
    values = tuple(input_size) if isinstance(input_size, abc.Sequence) and not isinstance(input_size, str) else (
        input_size,)
    if not values:
        return None
    if len(values) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in values):
        raise ConfigError(f"{keys.input_size} must be (short_edge, max_size), two positive integers as "
                          "ResizeShortestEdge takes them (e.g. (1024, 1024) for a ViTDet teacher), or empty for the "
                          f"student's images as they are; got {input_size!r}")
    return values


def _lazy_teacher_model(path: str, opts: Sequence[str], keys: TeacherKeys) -> torch.nn.Module:
    """``model`` of a LazyConfig file, with ``key=value`` overrides, instantiated."""
    try:
        cfg = LazyConfig.apply_overrides(LazyConfig.load(path), list(opts))
        if "model" not in cfg:
            raise KeyError("it defines no `model`")
        return instantiate(cfg.model)
    except Exception as err:  # a config file is arbitrary Python; hydra and omegaconf raise their own types
        raise ConfigError(f"{keys.config} {path!r} (with {keys.opts} {list(opts)!r}) does not give a teacher "
                          f"model: {type(err).__name__}: {err}") from None


def build_teacher(config: Union[str, torch.nn.Module], weights: str, dtype: str = "float32", opts: Sequence = (),
                  device: str = "cpu", keys: TeacherKeys = LAZY_KEYS,
                  input_size: Optional[Sequence[int]] = None) -> "FrozenTeacher":
    """A frozen teacher from a config file or a built model, and its weights, loaded strictly.

    ``config`` is a YAML config (its ``opts`` are ``KEY VALUE`` pairs), a LazyConfig ``.py`` file
    with a ``model`` (its ``opts`` are ``key=value`` strings), either of them as ``zoo:<name>``, or a
    model already built (a lazy ``model`` node that ``instantiate`` built). Everything cheap is
    checked first, the model family before the weights are read. This is the lazy-config entry point
    (``L(build_teacher)(config=..., weights=...)``); yacs configs go through ``from_student_cfg``.
    A teacher built here from a file leaves the global RNGs as they were (a model passed in was built
    by its caller).
    ``input_size``: see ``FrozenTeacher``.
    """
    check_dtype(dtype, keys)
    check_input_size(input_size, keys)
    check_weights_path(weights, keys)
    if isinstance(config, torch.nn.Module):
        model = config.to(device)
    elif not isinstance(config, str):
        raise ConfigError(f"{keys.config} must be a config file path or a model, got {type(config).__name__}")
    else:
        # The initial weights the file overwrites would draw from the global RNG: a student built after
        # its teacher would start elsewhere, and train on other random draws, than the same student
        # built without one. Rows of a comparison are paired on exactly that.
        with torch.random.fork_rng(devices=[]):
            if resolve_config_path(config, keys.config).endswith(".py"):
                model = _lazy_teacher_model(resolve_config_path(config, keys.config), opts, keys).to(device)
            else:
                model = build_model(yacs_teacher_cfg(config, opts, weights, device, keys))
    teacher = FrozenTeacher(model, dtype, keys, input_size)
    load_teacher_weights(model, weights, keys)
    return teacher


class FrozenTeacher:
    """Holds a teacher detector outside the student's module tree, and runs only its backbone and
    box heads (never its RPN, mask head or postprocessing).

    Not an ``nn.Module`` on purpose: the student's checkpoints, optimizer and DDP wrapper never see
    the teacher, so a saved model is a plain student (resume rebuilds the teacher from its weights).

    It sees the student's images (after the student's data augmentation), in its own channel order,
    normalised and padded as its own ``preprocess_image`` does (a ViTDet backbone pads to a square).
    With ``input_size = (short_edge, max_size)`` it sees each of them resized as
    ``ResizeShortestEdge(short_edge, max_size)`` would resize it (bilinear, antialiased), for a
    teacher trained at another scale than the student, and the student's proposal boxes are scaled by
    the same per-axis factors (``teacher_boxes``), so that its ROI logits still score the student's
    boxes row by row.
    """

    def __init__(self, model: torch.nn.Module, dtype: str = "float32", keys: TeacherKeys = YACS_KEYS,
                 input_size: Optional[Sequence[int]] = None):
        self.dtype = check_dtype(dtype, keys)
        self.input_size = check_input_size(input_size, keys)
        self.keys = keys
        self.stages = teacher_stages(model)
        self.model = model.eval().requires_grad_(False)
        self.flip_channels = False
        # Backbone.padding_constraints is Detectron2 main's (0.6 has none, and no square padding).
        self.square_size = int(getattr(model.backbone, "padding_constraints", {}).get("square_size", 0) or 0)
        if self.input_size and self.square_size and self.input_size[1] > self.square_size:
            raise ConfigError(f"{keys.input_size} {self.input_size} resizes images to a longer side of up to "
                              f"{self.input_size[1]} px, but the teacher pads them to a {self.square_size} px square "
                              f"(its backbone's square_pad): give a max_size of at most {self.square_size}")

    @classmethod
    def from_student_cfg(cls, student_cfg: CfgNode) -> "FrozenTeacher":
        t = student_cfg.MODEL.TEACHER
        return build_teacher(t.CONFIG_FILE, t.WEIGHTS, t.DTYPE, t.OPTS, student_cfg.MODEL.DEVICE, YACS_KEYS,
                             t.INPUT_SIZE)

    @property
    def num_classes(self) -> int:
        return self.model.roi_heads.num_classes

    @property
    def family(self) -> str:
        return family_name(self.model.roi_heads)

    def take_inputs_of(self, student_format: Optional[str]) -> None:
        """Accept images in the student's channel order, flipping them where the teacher's differs."""
        teacher_format = self.model.input_format
        if teacher_format != student_format and {teacher_format, student_format} != {"RGB", "BGR"}:
            raise ConfigError(f"teacher input format {teacher_format!r} and student input format {student_format!r} "
                              "(INPUT.FORMAT, or input_format of a lazy model) cannot be converted into each "
                              "other (only RGB <-> BGR)")
        self.flip_channels = teacher_format != student_format

    def _autocast(self):
        # Always an explicit region: a float32 teacher must stay float32 inside the student's AMP
        # autocast (SOLVER.AMP.ENABLED), not silently drop to the student's half precision.
        device_type = self.model.device.type
        if self.dtype == torch.float32:
            return torch.autocast(device_type=device_type, enabled=False)
        return torch.autocast(device_type=device_type, dtype=self.dtype)

    def image_size(self, height: int, width: int) -> Tuple[int, int]:
        """The size at which the teacher sees a student image of ``height`` x ``width``."""
        if self.input_size is None:
            return height, width
        return tuple(ResizeShortestEdge.get_output_shape(height, width, *self.input_size))

    def _image(self, image: torch.Tensor) -> torch.Tensor:
        """One student image as the teacher takes it, before its own normalisation and padding."""
        image = image.to(self.model.device)
        if self.flip_channels:
            image = image.flip(0)
        height, width = image.shape[-2:]
        size = self.image_size(height, width)
        if size != (height, width):
            image = F.interpolate(image[None].float(), size=size, mode="bilinear", align_corners=False,
                                  antialias=True)[0]
        if self.square_size and max(size) > self.square_size:
            raise ConfigError(
                f"the teacher pads its images to a {self.square_size} px square (its backbone's square_pad) but was "
                f"given a {size[0]}x{size[1]} image: set {self.keys.input_size} to ({self.square_size}, "
                f"{self.square_size}), so that it sees every image resized to fit, as its own test-time resize does")
        return image

    def teacher_boxes(self, proposals: List[Instances]) -> List[Boxes]:
        """The proposal boxes of the student's images in the coordinates of the images the teacher sees."""
        boxes = []
        for p in proposals:
            height, width = p.image_size
            new_height, new_width = self.image_size(height, width)
            if (new_height, new_width) == (height, width):
                boxes.append(p.proposal_boxes)
                continue
            sx, sy = new_width / width, new_height / height
            tensor = p.proposal_boxes.tensor
            boxes.append(Boxes(tensor * tensor.new_tensor([sx, sy, sx, sy])))
        return boxes

    @torch.no_grad()
    def features(self, batched_inputs: List[Dict]) -> List[torch.Tensor]:
        """The teacher's box-head input features for the images of ``batched_inputs`` (the student's
        resized inputs), as the teacher sees them (``image_size``), preprocessed with the teacher's own
        pixel mean, std and padding."""
        images = self.model.preprocess_image([{"image": self._image(x["image"])} for x in batched_inputs])
        with self._autocast():
            features = self.model.backbone(images.tensor)
        return [features[f] for f in self.model.roi_heads.box_in_features]

    @torch.no_grad()
    def box_logits(self, features: List[torch.Tensor], boxes: List[Boxes], stage: int = 0) -> torch.Tensor:
        """Class logits (R, C+1) of the teacher's box head of ``stage`` on the given per-image boxes, in
        the coordinates of the images ``features`` came from."""
        heads, head = self.model.roi_heads, self.stages[stage]
        with self._autocast():
            pooled = heads.box_pooler(features, boxes)
            # Only the class scores are needed, so the box-regression layer is skipped.
            scores = head.predictor.cls_score(torch.flatten(head.box_head(pooled), 1))
        return scores.float()

    def apply(self, fn) -> None:
        """Follow the student's ``.to()/.cuda()``."""
        self.model._apply(fn)
