"""Tiny Faster, Mask and Cascade R-CNN teacher/student configs and inputs for the detection tests."""
from pathlib import Path

import torch
from detectron2.config import get_cfg
from detectron2.modeling import build_model
from detectron2.structures import BitMasks, Boxes, Instances

from topkd_det.detection import add_topkd_config

REPO = Path(__file__).resolve().parents[1]
TINY_BASE = REPO / "configs" / "embedded" / "Base-Tiny-RCNN-FPN.yaml"
NUM_CLASSES = 6
# The keys that make the tiny Faster R-CNN another family.
FAMILIES = {
    "faster": {},
    "mask": {"MODEL.MASK_ON": True, "MODEL.ROI_MASK_HEAD.CONV_DIM": 16, "MODEL.ROI_MASK_HEAD.NUM_CONV": 1},
    "cascade": {"MODEL.ROI_HEADS.NAME": "CascadeROIHeads", "MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG": True},
}


def tiny_cfg(num_classes=NUM_CLASSES, family="faster", **overrides):
    cfg = get_cfg()
    add_topkd_config(cfg)
    cfg.merge_from_file(str(TINY_BASE))
    cfg.MODEL.DEVICE = "cpu"  # the base's "auto" would take a GPU where there is one; tests stay on the CPU
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = num_classes
    cfg.MODEL.FPN.OUT_CHANNELS = 32
    cfg.MODEL.ROI_BOX_HEAD.FC_DIM = 64
    cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = 32
    cfg.MODEL.RPN.POST_NMS_TOPK_TRAIN = 64
    cfg.MODEL.RPN.POST_NMS_TOPK_TEST = 32
    cfg.merge_from_list([x for kv in {**FAMILIES[family], **overrides}.items() for x in kv])
    return cfg


def write_teacher(tmp_path: Path, num_classes=NUM_CLASSES, depth=18, seed=1, family="faster", **overrides):
    """A teacher config file and its (randomly initialised) weights, as a user would pass them."""
    cfg = tiny_cfg(num_classes, family, **overrides)
    cfg.MODEL.RESNETS.DEPTH = depth
    cfg.INPUT.FORMAT = "BGR"
    cfg.MODEL.PIXEL_MEAN = [103.53, 116.28, 123.675]
    name = f"teacher_{family}_R{depth}_c{num_classes}_{len(list(tmp_path.glob('teacher_*.yaml')))}"
    config_file = tmp_path / f"{name}.yaml"
    config_file.write_text(cfg.dump())
    torch.manual_seed(seed)
    weights = tmp_path / f"{name}.pth"
    torch.save({"model": build_model(cfg).state_dict()}, weights)
    return str(config_file), str(weights)


def distill_cfg(tmp_path: Path, method="topkd", teacher=None, family="faster", **overrides):
    config_file, weights = teacher or write_teacher(tmp_path)
    cfg = tiny_cfg(family=family, **overrides)
    cfg.MODEL.META_ARCHITECTURE = "DistillRCNN"
    cfg.MODEL.TEACHER.CONFIG_FILE = config_file
    cfg.MODEL.TEACHER.WEIGHTS = weights
    cfg.MODEL.DISTILL.METHOD = method
    cfg.MODEL.DISTILL.TOPKD.K = 2
    return cfg


def batch(n_images=2, size=96, seed=0, masks=False):
    """Images with three boxes each; ``masks`` adds each box's filled rectangle as its mask."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n_images):
        inst = Instances((size, size))
        xy = torch.randint(0, size // 2, (3, 2), generator=g).float()
        wh = torch.randint(12, size // 2, (3, 2), generator=g).float()
        inst.gt_boxes = Boxes(torch.cat([xy, xy + wh], 1))
        inst.gt_classes = torch.randint(0, NUM_CLASSES, (3,), generator=g)
        if masks:
            grid = torch.zeros(3, size, size, dtype=torch.bool)
            for i, (x0, y0, x1, y1) in enumerate(inst.gt_boxes.tensor.long().tolist()):
                grid[i, y0:y1, x0:x1] = True
            inst.gt_masks = BitMasks(grid)
        image = torch.rand(3, size, size, generator=g) * 255
        out.append({"image": image, "instances": inst, "height": size, "width": size})
    return out
