"""train_net's set-up: config loading and the dataset check fail early and clearly."""
import pytest

from topkd_det.config_io import ConfigError
from topkd_det.detection.engine import check_cfg

from detection_fixtures import TINY_BASE


def test_unregistered_dataset_fails_before_training(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text(f'_BASE_: "{TINY_BASE}"\nDATASETS:\n  TRAIN: ("no_such_dataset_train",)\n  TEST: ()\n')
    with pytest.raises(ValueError, match="DATASETS.TRAIN.*no_such_dataset_train"):
        check_cfg(str(config), [])


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="no such config file.*nope.yaml"):
        check_cfg(str(tmp_path / "nope.yaml"), [])


def test_unknown_key_names_the_key(tmp_path):
    with pytest.raises(ValueError, match="override.*Non-existent key: MODEL.DISTILL.TOPKD.KK"):
        check_cfg(str(TINY_BASE), ["MODEL.DISTILL.TOPKD.KK", "3"])


def test_a_distillation_method_without_distill_rcnn_fails(tmp_path):
    """A RetinaNet (or any other meta-architecture) with MODEL.DISTILL.METHOD set would train undistilled."""
    with pytest.raises(ConfigError, match="MODEL.DISTILL.METHOD kd needs MODEL.META_ARCHITECTURE DistillRCNN, not "
                                          "RetinaNet: Faster R-CNN and Mask R-CNN"):
        check_cfg(str(TINY_BASE), ["MODEL.META_ARCHITECTURE", "RetinaNet", "MODEL.DISTILL.METHOD", "kd"])


def test_a_proposal_free_teacher_config_fails_before_any_model_is_built(tmp_path):
    teacher = tmp_path / "retinanet.yaml"
    teacher.write_text(f'_BASE_: "{TINY_BASE}"\nMODEL:\n  META_ARCHITECTURE: "RetinaNet"\n')
    with pytest.raises(ConfigError, match="MODEL.TEACHER.CONFIG_FILE is a RetinaNet, whose class logits are not per "
                                          "ROI: the teacher must be one of Faster R-CNN"):
        check_cfg(str(TINY_BASE), ["MODEL.META_ARCHITECTURE", "DistillRCNN", "MODEL.TEACHER.CONFIG_FILE", str(teacher),
                                   "DATASETS.TRAIN", "()", "DATASETS.TEST", "()"])
