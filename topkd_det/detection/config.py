"""Config keys of the Detectron2 extension: ``add_topkd_config(cfg)``, in Detectron2's style."""
from detectron2.config import CfgNode as CN
from detectron2.config import get_cfg

from ..config_io import merge_config
from ..distill_config import distill_cfg_node
from .backbones import add_mobilenet_config
from .device import AUTO, resolve_device


def add_topkd_config(cfg: CN) -> None:
    """Add the teacher (``MODEL.TEACHER``), the distillation loss (``MODEL.DISTILL``) and the extra
    backbones' keys to a Detectron2 config. Idempotent."""
    if "TEACHER" in cfg.MODEL:
        return
    add_mobilenet_config(cfg)

    cfg.MODEL.TEACHER = CN()
    # The teacher's own Detectron2 config (a path, or "zoo:<model-zoo name>") and its weights.
    cfg.MODEL.TEACHER.CONFIG_FILE = ""
    cfg.MODEL.TEACHER.WEIGHTS = ""
    # The teacher only runs forward, so it may run in reduced precision (autocast).
    cfg.MODEL.TEACHER.DTYPE = "float32"
    # KEY VALUE overrides of the teacher's own config, applied after CONFIG_FILE,
    # e.g. ['MODEL.ROI_HEADS.NUM_CLASSES', 3].
    cfg.MODEL.TEACHER.OPTS = []
    # Distill from a teacher whose known class names or order differ from the student's data
    # (class_names.py); off, such a teacher is refused before anything is built.
    cfg.MODEL.TEACHER.ALLOW_OTHER_CLASSES = False
    # (short_edge, max_size): the teacher sees each student image resized as ResizeShortestEdge
    # would resize it, and the student's boxes scaled alike; empty: the student's images as they are.
    # E.g. (1024, 1024) for a ViTDet teacher (trained at 1024, padded to a 1024 square).
    cfg.MODEL.TEACHER.INPUT_SIZE = ()

    # COCO-format datasets to register before anything is built: [[name, json_file, image_root], ...].
    # DATASETS.TRAIN/TEST may then name them; being part of the dumped config.yaml, they need not be
    # repeated for --resume or --eval-only.
    cfg.DATASETS.COCO_INSTANCES = []
    # The dataset check (data_check.py) stops the run when more than this fraction of a dataset's boxes
    # are ones Detectron2 drops (zero width or height, outside the image, invalid polygon) or misplaces
    # (negative width or height); 1.0 accepts any.
    cfg.DATASETS.MAX_BAD_BOX_FRACTION = 0.01

    cfg.MODEL.DISTILL = distill_cfg_node(CN)
    cfg.MODEL.DISTILL.METHOD = "none"
    # The student's box predictor already applies CE to the same ROI logits (its loss_cls).
    cfg.MODEL.DISTILL.CE_WEIGHT = 0.0
    # Warmup and progress are in iterations in detection.


def load_config(config_file: str, opts=()) -> CN:
    """``get_cfg()`` + ``add_topkd_config`` + the file + ``KEY VALUE`` overrides (errors name their
    source), with ``MODEL.DEVICE auto`` resolved to the device it stands for here. Whether another
    device exists here is checked when a run is set up (``engine.setup_cfg``), not when a config is read."""
    cfg = get_cfg()
    add_topkd_config(cfg)
    merge_config(cfg, config_file, opts)
    if cfg.MODEL.DEVICE == AUTO:
        cfg.MODEL.DEVICE = resolve_device(AUTO, "MODEL.DEVICE")
    return cfg
