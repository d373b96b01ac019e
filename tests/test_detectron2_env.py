"""The Detectron2 this project runs on: importable, model zoo configs present, trains and evaluates.

``make test-d2main`` runs the suite against the official build with TOPKD_EXPECT_DETECTRON2=official,
so that a wrong PYTHONPATH cannot silently test the default build twice.
"""
import importlib.metadata
import importlib.util
import json
import os
import subprocess
import sys

import detectron2
import numpy as np
import pytest
import torch

from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import COCOEvaluator
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

from topkd_det.detection.teacher import model_zoo_config_file


def test_model_zoo_config_resolves():
    path = model_zoo_config_file("COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml")
    assert path.endswith("faster_rcnn_R_50_FPN_1x.yaml") and os.path.isfile(path)


def test_the_expected_detectron2_build_is_under_test():
    expected = os.environ.get("TOPKD_EXPECT_DETECTRON2")
    if expected is None:
        pytest.skip("TOPKD_EXPECT_DETECTRON2 is not set: any Detectron2 build may be under test")
    compiled = importlib.util.find_spec("detectron2._C") is not None
    assert expected in ("official", "pure-python")
    assert compiled == (expected == "official"), f"expected the {expected} build, found {detectron2.__file__}"


def test_nothing_of_the_project_imports_the_model_zoo_module():
    """detectron2.model_zoo needs pkg_resources on official builds, which setuptools >= 82 lacks."""
    code = ("import sys, topkd_det.detection, topkd_det.detection.engine, topkd_det.detection.embedded; "
            "from topkd_det.detection.teacher import model_zoo_config_file; "
            "model_zoo_config_file('COCO-Detection/faster_rcnn_R_101_FPN_3x.yaml'); "
            "print(sorted(m for m in sys.modules if m.startswith('detectron2.model_zoo')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_setuptools_without_pkg_resources_is_the_locked_one():
    major = int(importlib.metadata.version("setuptools").split(".")[0])
    assert major >= 82, "requirements/lock.txt pins a setuptools without pkg_resources; the venv has an older one"


def test_faster_rcnn_builds_and_trains_one_step():
    cfg = get_cfg()
    cfg.merge_from_file(model_zoo_config_file("COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml"))
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.RESNETS.NORM = "BN"
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 3
    model = build_model(cfg)
    model.train()
    inst = Instances((96, 128))
    inst.gt_boxes = Boxes(torch.tensor([[10.0, 12.0, 60.0, 70.0], [50.0, 20.0, 120.0, 90.0]]))
    inst.gt_classes = torch.tensor([0, 2])
    batch = [{"image": torch.rand(3, 96, 128) * 255, "instances": inst, "height": 96, "width": 128}]
    with EventStorage(0):
        losses = model(batch)
    assert set(losses) == {"loss_cls", "loss_box_reg", "loss_rpn_cls", "loss_rpn_loc"}
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


@pytest.fixture
def tiny_coco(tmp_path):
    images = [{"id": i, "file_name": f"{i}.jpg", "height": 64, "width": 64} for i in (1, 2)]
    anns = [
        {"id": 1, "image_id": 1, "category_id": 1, "bbox": [4, 4, 20, 30], "area": 600, "iscrowd": 0},
        {"id": 2, "image_id": 1, "category_id": 2, "bbox": [30, 10, 25, 25], "area": 625, "iscrowd": 0},
        {"id": 3, "image_id": 2, "category_id": 1, "bbox": [10, 20, 40, 30], "area": 1200, "iscrowd": 0},
    ]
    cats = [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]
    path = tmp_path / "gt.json"
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return path, anns


def test_coco_evaluator_scores_ground_truth_as_ap_100(tiny_coco, tmp_path):
    from detectron2.data.datasets import register_coco_instances

    path, anns = tiny_coco
    name = "topkd_test_tiny_coco"
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    register_coco_instances(name, {}, str(path), str(tmp_path))
    DatasetCatalog.get(name)  # loading sets the json-id -> contiguous-id map the evaluator inverts
    evaluator = COCOEvaluator(name, output_dir=str(tmp_path / "eval"))
    evaluator.reset()
    for image_id in (1, 2):
        mine = [a for a in anns if a["image_id"] == image_id]
        inst = Instances((64, 64))
        inst.pred_boxes = Boxes(torch.tensor([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in mine)], dtype=torch.float32))
        inst.scores = torch.ones(len(mine))
        inst.pred_classes = torch.tensor([a["category_id"] - 1 for a in mine])
        evaluator.process([{"image_id": image_id}], [{"instances": inst}])
    results = evaluator.evaluate()
    assert np.isclose(results["bbox"]["AP"], 100.0)
    assert np.isclose(results["bbox"]["AP50"], 100.0)
