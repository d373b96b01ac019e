"""The embedded Mask R-CNN and Cascade R-CNN pairs (configs/embedded/{mask,cascade}_{teacher,topkd}.yaml)
run offline on the CPU: each teacher trains a few iterations on the synthetic shapes with their
instance masks, then its TopKD student distills from it, and the Mask student evaluates boxes and masks."""
import json
import uuid

import pytest
import torch

from conftest import load_tool
from topkd_det.data.synthetic_coco import SyntheticConfig, generate
from topkd_det.detection.datasets import register_synthetic

pytestmark = pytest.mark.usefixtures("single_thread")
# The embedded sizes, smaller still for the test's time (32 px images, narrow FPN and box head).
SMALL = ["MODEL.FPN.OUT_CHANNELS", "32", "MODEL.ROI_BOX_HEAD.FC_DIM", "64", "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE",
         "32", "MODEL.RPN.POST_NMS_TOPK_TRAIN", "64", "MODEL.RPN.POST_NMS_TOPK_TEST", "32",
         "MODEL.ROI_MASK_HEAD.CONV_DIM", "16", "INPUT.MIN_SIZE_TRAIN", "(32,)", "INPUT.MAX_SIZE_TRAIN", "32",
         "INPUT.MIN_SIZE_TEST", "32", "INPUT.MAX_SIZE_TEST", "32", "MODEL.DEVICE", "cpu", "SOLVER.IMS_PER_BATCH", "2",
         "SOLVER.STEPS", "()", "SOLVER.WARMUP_ITERS", "1", "SOLVER.CHECKPOINT_PERIOD", "1000"]


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("family_shapes") / "data"
    generate(root, SyntheticConfig(num_train=4, num_val=2, num_test=1, image_size=32, min_object_size=0.25,
                                   max_object_size=0.4), progress=False)
    return register_synthetic(root, name_prefix=f"families_{uuid.uuid4().hex[:6]}")


def _train_net(*args):
    tool = load_tool("train_net")
    return tool.main(tool.parser().parse_args([str(a) for a in args]))


def _metrics(out):
    return [json.loads(line) for line in (out / "metrics.json").read_text().splitlines()]


@pytest.mark.parametrize("family", ["mask", "cascade"])
def test_embedded_pair_trains_offline_on_the_cpu(family, shapes, tmp_path, monkeypatch):
    monkeypatch.setenv("TQDM_DISABLE", "1")
    data = ["DATASETS.TRAIN", f"('{shapes['train']}',)", "DATASETS.TEST", f"('{shapes['val']}',)"]
    teacher = tmp_path / "teacher"
    _train_net("--config-file", f"configs/embedded/{family}_teacher.yaml", *data, "OUTPUT_DIR", teacher, *SMALL,
               "SOLVER.MAX_ITER", "1")
    # The teacher's own dumped config (its data and sizes) and weights, as `make demo` points students at them.
    student = tmp_path / "student"
    _train_net("--config-file", f"configs/embedded/{family}_topkd.yaml", *data, "OUTPUT_DIR", student, *SMALL,
               "SOLVER.MAX_ITER", "2", "MODEL.TEACHER.CONFIG_FILE", teacher / "config.yaml",
               "MODEL.TEACHER.WEIGHTS", teacher / "model_final.pth")

    losses = set().union(*(line.keys() for line in _metrics(student)))
    if family == "mask":
        assert {"loss_mask", "loss_cls", "loss_tdl", "loss_con"} <= losses
    else:  # one distillation term per cascade stage, beside Detectron2's per-stage losses
        for stage in range(3):
            assert {f"loss_cls_stage{stage}", f"loss_tdl_stage{stage}", f"loss_con_stage{stage}"} <= losses
    state = torch.load(student / "model_final.pth", map_location="cpu", weights_only=True)
    assert state["iteration"] == 1 and len(state["classes"]) == 24  # the synthetic class names
    assert not any(k.startswith("teacher") for k in state["model"])

    results = _train_net("--config-file", student / "config.yaml", "--eval-only",
                         "MODEL.WEIGHTS", student / "model_final.pth")
    assert "AP" in results["bbox"]
    if family == "mask":
        assert "AP" in results["segm"]  # masks are predicted and scored against the polygons
