"""Every ablation variant is a valid config in both trainers, so a long ablation cannot die mid-way."""
import importlib.util
import sys

import pytest
import torch

from conftest import REPO
from topkd_det.classification.config import load_cls_cfg
from topkd_det.core import build_loss
from topkd_det.detection.config import load_config

sys.path.insert(0, str(REPO / "benchmarks"))
import ablation_groups as ag  # noqa: E402


def _runner(name):
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _variants(groups):
    return [(g, name, o) for g, members in groups.items() for name, o in members.items()]


@pytest.mark.parametrize("group,name,overrides", _variants(_runner("det_ablation").ALL))
def test_detection_variant_builds_its_loss(group, name, overrides):
    cfg = load_config(REPO / "configs" / "embedded" / "topkd.yaml", ag.prefixed(overrides, "MODEL.DISTILL."))
    classes = cfg.MODEL.ROI_HEADS.NUM_CLASSES
    loss = build_loss(cfg.MODEL.DISTILL, num_classes=classes + 1, background_index=classes)
    s, t = torch.randn(6, classes + 1), torch.randn(6, classes + 1)
    terms = loss(s, t, torch.tensor([0, 1, 2, classes, classes, 3]), groups=torch.tensor([0, 0, 0, 1, 1, 1]))
    assert terms and all(torch.isfinite(v) for v in terms.values())


@pytest.mark.parametrize("group,name,overrides", _variants(_runner("cls_ablation").ALL))
def test_classification_variant_builds_its_loss(group, name, overrides):
    cfg = load_cls_cfg(str(REPO / "configs" / "fashion_mnist" / "topkd.yaml"),
                       [str(v) for v in ag.prefixed(overrides, "DISTILL.")], check_files=False)
    loss = build_loss(cfg.DISTILL, num_classes=10)
    terms = loss(torch.randn(5, 10), torch.randn(5, 10), torch.tensor([0, 1, 2, 3, 4]))
    assert all(torch.isfinite(v) for v in terms.values())


def test_effective_drops_overrides_equal_to_the_defaults_so_runs_are_shared():
    base = load_config(REPO / "configs" / "embedded" / "topkd.yaml")
    k = base.MODEL.DISTILL.TOPKD.K
    assert ag.effective(["MODEL.DISTILL.TOPKD.K", k], base) == []
    assert ag.effective(["MODEL.DISTILL.TOPKD.K", k + 1], base) == ["MODEL.DISTILL.TOPKD.K", k + 1]
    assert ag.slug([]) == "defaults"
    assert ag.slug(["MODEL.DISTILL.TOPKD.K", 3, "MODEL.DISTILL.MODE", "kl"]) == "k-3_mode-kl"


def test_prefixed_touches_keys_only():
    assert ag.prefixed(["TOPKD.K", 3, "MODE", "kl"], "DISTILL.") == ["DISTILL.TOPKD.K", 3, "DISTILL.MODE", "kl"]


def test_other_config_groups_override_existing_keys_of_their_configs():
    runner = _runner("det_ablation")
    for group in runner.OTHER_CONFIGS.values():
        for config, overrides in group.values():
            cfg = load_config(REPO / "configs" / "embedded" / config, ag.prefixed(overrides, runner.PREFIX))
            for key, value in zip(overrides[::2], overrides[1::2]):
                node = cfg.MODEL.DISTILL
                for part in key.split("."):
                    node = node[part]
                assert node == value
