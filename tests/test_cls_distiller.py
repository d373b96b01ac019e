"""Teacher loading from the common checkpoint layouts, and the frozen-teacher distiller."""
import argparse
from collections import OrderedDict

import pytest
import torch

from topkd_det.classification.checkpoint import WeightsError, load_weights
from topkd_det.classification.distiller import Distiller
from topkd_det.classification.models import build_model
from topkd_det.core import build_loss


def _assert_same_weights(a, b):
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(x, y), name


@pytest.mark.parametrize("wrap", [
    lambda sd: sd,                                                        # plain state dict
    lambda sd: {"model": sd, "epoch": 240, "best_acc": 75.6},             # mdistiller / CRD
    lambda sd: {"state_dict": sd, "epoch": 3},                            # lightning style
    lambda sd: {"net": sd},
    lambda sd: OrderedDict((f"module.{k}", v) for k, v in sd.items()),    # DataParallel
    lambda sd: {"model": OrderedDict((f"module.{k}", v) for k, v in sd.items())},
], ids=["plain", "mdistiller", "state_dict", "net", "module-prefix", "mdistiller-module-prefix"])
def test_teacher_checkpoint_layouts_load(tmp_path, wrap):
    source = build_model("fmnist_teacher", 10)
    path = tmp_path / "teacher.pth"
    torch.save(wrap(source.state_dict()), path)
    target = build_model("fmnist_teacher", 10)
    load_weights(target, str(path), "teacher")
    _assert_same_weights(source, target)


def test_torchvision_weight_file_loads(tmp_path):
    from torchvision.models import resnet18

    path = tmp_path / "resnet18-f37072fd.pth"
    torch.save(resnet18().state_dict(), path)  # torchvision's files are plain state dicts
    ours = build_model("resnet18", 1000)
    load_weights(ours, str(path), "teacher 'resnet18'")
    assert torch.equal(ours.fc.weight, torch.load(path)["fc.weight"])


def test_architecture_mismatch_lists_missing_and_unexpected_keys(tmp_path):
    source, target = build_model("fmnist_student", 10).state_dict(), build_model("fmnist_teacher", 10)
    source["extra.weight"] = torch.zeros(1)
    path = tmp_path / "student.pth"
    torch.save({"model": source}, path)
    with pytest.raises(WeightsError) as info:
        load_weights(target, str(path), "teacher 'fmnist_teacher' (MODEL.TEACHER_WEIGHTS)")
    message = str(info.value)
    expected = target.state_dict()
    missing = [k for k in expected if k not in source]
    unexpected = [k for k in source if k not in expected]
    reshaped = [k for k in expected if k in source and source[k].shape != expected[k].shape]
    assert "teacher 'fmnist_teacher' (MODEL.TEACHER_WEIGHTS)" in message
    assert f"{len(missing)} missing keys: {', '.join(missing[:5])}" in message
    assert f"{len(unexpected)} unexpected keys: extra.weight" in message
    assert f"{len(reshaped)} shape mismatches (file vs model): {reshaped[0]} " in message
    if len(missing) > 5:
        assert f"({len(missing) - 5} more)" in message


def test_unexpected_keys_and_class_count_mismatch(tmp_path):
    state = build_model("fmnist_student", 10).state_dict()
    state["extra.weight"] = torch.zeros(1)
    path = tmp_path / "s.pth"
    torch.save(state, path)
    with pytest.raises(WeightsError, match=r"1 unexpected keys: extra.weight"):
        load_weights(build_model("fmnist_student", 10), str(path), "student")
    with pytest.raises(WeightsError, match=r"fc.weight \(10, 1568\) vs \(7, 1568\)"):
        load_weights(build_model("fmnist_student", 7), str(path), "student")


def test_unsafe_or_empty_files_are_refused(tmp_path):
    pickled = tmp_path / "opt.pth"
    torch.save({"opt": argparse.Namespace(lr=0.1), "model": build_model("fmnist_student", 10).state_dict()}, pickled)
    with pytest.raises(WeightsError, match="re-save just the state dict"):
        load_weights(build_model("fmnist_student", 10), str(pickled), "student")
    empty = tmp_path / "empty.pth"
    torch.save({"epoch": 3}, empty)
    with pytest.raises(WeightsError, match=r"neither a state dict nor one under \['model', 'state_dict', 'net'\]"):
        load_weights(build_model("fmnist_student", 10), str(empty), "student")
    with pytest.raises(WeightsError, match="student: no such file"):
        load_weights(build_model("fmnist_student", 10), str(tmp_path / "none.pth"), "student")


def test_distiller_keeps_teacher_frozen_and_returns_logits_and_terms():
    teacher, student = build_model("fmnist_teacher", 10), build_model("fmnist_student", 10)
    distiller = Distiller(student, teacher, build_loss("topkd", num_classes=10, topkd={"k": 3}))
    distiller.train()
    assert not teacher.training and student.training
    assert not any(p.requires_grad for p in teacher.parameters())
    bn = next(m for m in teacher.modules() if isinstance(m, torch.nn.BatchNorm2d))
    running_mean = bn.running_mean.clone()
    x, y = torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))
    logits, losses = distiller(x, y, progress=1.0)
    assert logits.shape == (8, 10) and set(losses) == {"loss_ce", "loss_con", "loss_tdl"}
    sum(losses.values()).backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert student.fc.weight.grad is not None
    assert torch.equal(bn.running_mean, running_mean)  # eval-mode BN: stats untouched


def test_vanilla_distiller_has_no_teacher():
    distiller = Distiller(build_model("fmnist_student", 10), None, build_loss("none", num_classes=10))
    _, losses = distiller(torch.randn(4, 1, 28, 28), torch.tensor([0, 1, 2, 3]), progress=0.0)
    assert set(losses) == {"loss_ce"}
