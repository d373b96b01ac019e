"""Non-finite distillation terms in detection training, now that the loss reads nothing on the host per
step: under ``NONFINITE skip`` the batch is skipped and ``LossFaultCheck`` warns at the next logging
period; under ``error`` Detectron2's own metrics writer stops training at that iteration."""
import math

import pytest

from conftest import load_tool
from run_fixtures import det_config
from topkd_det.detection.teacher import FrozenTeacher

train_net = load_tool("train_net")


@pytest.fixture
def nan_teacher_at_iteration_1(monkeypatch):
    """The teacher's box logits are NaN in the second training iteration (one box head: one call each)."""
    calls = [0]
    box_logits = FrozenTeacher.box_logits

    def poisoned(self, features, boxes, stage=0):
        calls[0] += 1
        out = box_logits(self, features, boxes, stage)
        return out * math.nan if calls[0] == 2 else out

    monkeypatch.setattr(FrozenTeacher, "box_logits", poisoned)


def test_skip_policy_skips_the_batch_and_warns(tmp_path, det_run_names, nan_teacher_at_iteration_1, caplog):
    config = det_config(tmp_path, det_run_names)
    train_net.cli(["--config-file", str(config), "OUTPUT_DIR", str(tmp_path / "out"),
                   "MODEL.DISTILL.NONFINITE", "skip"])
    assert "skipped 1 batch(es) with non-finite logits or loss terms, the first at iteration 1" in caplog.text
    assert (tmp_path / "out" / "model_final.pth").is_file()


def test_error_policy_stops_at_the_iteration(tmp_path, det_run_names, nan_teacher_at_iteration_1):
    config = det_config(tmp_path, det_run_names)
    with pytest.raises(FloatingPointError, match=r"iteration=1!\nloss_dict = .*'loss_con': [a-z0-9.(]*nan"):
        train_net.main(train_net.parse_args(["--config-file", str(config), "OUTPUT_DIR", str(tmp_path / "out")]))
