"""Every shipped COCO config parses, names registered datasets, and builds (weights disabled)."""
from pathlib import Path

import pytest
from detectron2.config import get_cfg
from detectron2.modeling import build_model

import topkd_det.detection.teacher as teacher_module
from topkd_det.detection import add_topkd_config
from topkd_det.detection.engine import check_datasets
from topkd_det.detection.families import family_name

CONFIG_ROOT = Path(__file__).resolve().parents[1] / "configs"
CONFIGS = sorted(p for folder in ("COCO-Detection", "COCO-InstanceSegmentation")
                 for p in (CONFIG_ROOT / folder).glob("*.yaml"))
RUNNABLE = [p for p in CONFIGS if not p.name.startswith("Base-")]
# Pairs of other families than Faster R-CNN: (student family, teacher family).
FAMILIES = {"mask_R101_R50": ("Mask R-CNN", "Mask R-CNN"),
            "cascade_mask_R50-3x_R50": ("Cascade Mask R-CNN", "Cascade Mask R-CNN")}


def _load(path):
    cfg = get_cfg()
    add_topkd_config(cfg)
    cfg.merge_from_file(str(path))
    cfg.merge_from_list(["MODEL.WEIGHTS", "", "MODEL.DEVICE", "cpu", "INPUT.MIN_SIZE_TEST", 64, "INPUT.MAX_SIZE_TEST", 64])
    return cfg


def test_the_paper_pairs_are_all_there():
    names = {p.stem for p in RUNNABLE}
    for pair in ("R101_R18", "R101_R50", "R50_MV2"):
        assert {f"kd_{pair}", f"dkd_{pair}", f"topkd_{pair}"} <= names
    assert {"teacher_R101", "teacher_R50", "student_R18", "student_R50", "student_MV2"} <= names
    for pair in FAMILIES:
        assert {f"kd_{pair}", f"dkd_{pair}", f"topkd_{pair}"} <= names
    assert {"student_mask_R50", "student_cascade_mask_R50"} <= names


@pytest.mark.parametrize("path", RUNNABLE, ids=lambda p: p.stem)
def test_config_builds(path, monkeypatch):
    cfg = _load(path)
    assert cfg.SOLVER.IMS_PER_BATCH == 8 and cfg.SOLVER.MAX_ITER == 180000
    assert tuple(cfg.SOLVER.STEPS) == (120000, 160000) and cfg.SOLVER.BASE_LR == 0.01
    check_datasets(cfg, check_files=False)
    if cfg.MODEL.META_ARCHITECTURE == "DistillRCNN":
        # Model-zoo teacher weights would be downloaded; the build is what is tested here.
        monkeypatch.setattr(teacher_module, "load_teacher_weights", lambda *args: None)
    model = build_model(cfg)
    if cfg.MODEL.META_ARCHITECTURE == "DistillRCNN":
        assert model.teacher.num_classes == 80
        assert model.distill_loss.method == cfg.MODEL.DISTILL.METHOD
        pair = path.stem.split("_", 1)[1]
        student, teacher = FAMILIES.get(pair, ("Faster R-CNN", "Faster R-CNN"))
        assert (family_name(model.roi_heads), model.teacher.family) == (student, teacher)
