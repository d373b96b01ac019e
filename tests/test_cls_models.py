"""The classification model zoo: forward contract, registry, and fidelity to mdistiller's zoo."""

import pytest
import torch
import torchvision

from topkd_det.classification.models import (
    FIXED_INPUT_SIZE,
    MODEL_REGISTRY,
    FeatureClassifier,
    UnknownModelError,
    build_model,
    list_models,
)

IMAGENET = {"resnet18", "resnet34", "resnet50", "MobileNetV1"}
FMNIST = {"fmnist_teacher", "fmnist_student"}
# Canonical names are their constructors' names; aliases would only rebuild the same models.
CANONICAL = [name for name in list_models() if MODEL_REGISTRY[name].__name__ == name]


pytestmark = pytest.mark.usefixtures("single_thread")


def _input(name: str, n: int = 2) -> torch.Tensor:
    if name in FMNIST:
        return torch.randn(n, 1, 28, 28)
    if name in FIXED_INPUT_SIZE:
        return torch.randn(n, 3, FIXED_INPUT_SIZE[name], FIXED_INPUT_SIZE[name])
    # ImageNet models pool adaptively, so 64x64 exercises them at a fraction of 224's cost.
    size = 64 if name in IMAGENET else 32
    return torch.randn(n, 3, size, size)


def _num_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _build_on_meta(name: str, num_classes: int) -> torch.nn.Module:
    """Shapes and names without allocating or initialising weights (keeps the file fast)."""
    with torch.device("meta"):
        return build_model(name, num_classes=num_classes)


@pytest.mark.parametrize("name", CANONICAL)
def test_forward_returns_logits_and_penultimate_features(name):
    model = build_model(name, num_classes=7).eval()
    with torch.no_grad():
        logits, feats = model(_input(name), return_features=True)
        head_of_feats = model.head(feats)
    assert logits.shape == (2, 7)
    assert feats.shape == (2, model.feature_dim)
    # The features are exactly what the final linear layer consumes.
    torch.testing.assert_close(head_of_feats, logits)
    # Every model keeps the shared forward, so the default-return test below covers them all.
    assert type(model).forward is FeatureClassifier.forward


@pytest.mark.parametrize("name", ["resnet8", "fmnist_student"])
def test_default_forward_returns_only_logits(name):
    model = build_model(name, num_classes=7).eval()
    x = _input(name)
    with torch.no_grad():
        logits = model(x)
        expected, _ = model(x, return_features=True)
    assert isinstance(logits, torch.Tensor)
    torch.testing.assert_close(logits, expected)


def test_mdistiller_aliases_build_the_same_models():
    assert MODEL_REGISTRY["mobile_half"] is MODEL_REGISTRY["MobileNetV2"]
    assert MODEL_REGISTRY["ShuffleV1"] is MODEL_REGISTRY["ShuffleNetV1"]
    assert MODEL_REGISTRY["ShuffleV2"] is MODEL_REGISTRY["ShuffleNetV2"]
    for depth in (8, 11, 13, 16, 19):
        assert MODEL_REGISTRY[f"vgg{depth}_bn"] is MODEL_REGISTRY[f"vgg{depth}"]
    assert list_models() == sorted(MODEL_REGISTRY)


# Exact counts (100 classes) of mdistiller's code for the same models; papers report them rounded:
# resnet8x4 1.23M, resnet32x4 7.43M, wrn_40_2 2.25M, resnet56 0.86M, vgg13 9.46M,
# MobileNetV2 0.81M, ShuffleV1 0.95M, ShuffleV2 1.36M, ResNet50 23.71M.
MDISTILLER_PARAMS = {
    "resnet20": 278_324,
    "resnet56": 861_620,
    "resnet110": 1_736_564,
    "resnet8x4": 1_233_540,
    "resnet32x4": 7_433_860,
    "wrn_16_2": 703_284,
    "wrn_40_1": 569_780,
    "wrn_40_2": 2_255_156,
    "vgg8": 3_965_028,
    "vgg13": 9_462_180,
    "MobileNetV2": 812_836,
    "ShuffleNetV1": 949_258,
    "ShuffleNetV2": 1_355_528,
    "ResNet50": 23_705_252,
}


@pytest.mark.parametrize("name", sorted(MDISTILLER_PARAMS))
def test_cifar_parameter_counts_match_mdistiller(name):
    assert _num_params(_build_on_meta(name, 100)) == MDISTILLER_PARAMS[name]


# Key names (and shapes) present in mdistiller/CRD checkpoints, read off mdistiller's model code.
MDISTILLER_KEYS = {
    "resnet8x4": {
        "conv1.weight": (32, 3, 3, 3),
        "bn1.running_mean": (32,),
        "layer1.0.conv1.weight": (64, 32, 3, 3),
        "layer1.0.downsample.0.weight": (64, 32, 1, 1),
        "layer1.0.downsample.1.running_var": (64,),
        "layer3.0.conv2.weight": (256, 256, 3, 3),
        "fc.weight": (100, 256),
    },
    "resnet32x4": {
        "layer1.4.bn2.num_batches_tracked": (),
        "layer2.0.downsample.0.weight": (128, 64, 1, 1),
        "layer3.4.conv2.weight": (256, 256, 3, 3),
        "fc.bias": (100,),
    },
    "wrn_40_2": {
        "conv1.weight": (16, 3, 3, 3),
        "block1.layer.0.bn1.weight": (16,),
        "block1.layer.0.convShortcut.weight": (32, 16, 1, 1),
        "block2.layer.5.conv2.weight": (64, 64, 3, 3),
        "block3.layer.0.convShortcut.weight": (128, 64, 1, 1),
        "bn1.running_var": (128,),
        "fc.weight": (100, 128),
    },
    "vgg13": {
        "block0.0.weight": (64, 3, 3, 3),
        "block0.0.bias": (64,),
        "block0.4.running_mean": (64,),
        "block2.3.weight": (256, 256, 3, 3),
        "block4.4.weight": (512,),
        "classifier.weight": (100, 512),
    },
    "MobileNetV2": {
        "conv1.0.weight": (16, 3, 3, 3),
        "conv1.1.weight": (16,),
        "blocks.0.0.conv.0.weight": (16, 16, 1, 1),
        "blocks.1.0.conv.3.weight": (48, 1, 3, 3),  # depthwise over 8 x 6 channels
        "blocks.6.0.conv.6.weight": (160, 480, 1, 1),
        "conv2.0.weight": (1280, 160, 1, 1),
        "classifier.0.weight": (100, 1280),
    },
    "ResNet50": {
        "layer1.0.shortcut.0.weight": (256, 64, 1, 1),
        "layer4.2.conv3.weight": (2048, 512, 1, 1),
        "linear.weight": (100, 2048),
    },
    "ShuffleNetV1": {
        "layer1.0.conv1.weight": (54, 24, 1, 1),
        "layer2.1.conv3.weight": (480, 40, 1, 1),
        "linear.weight": (100, 960),
    },
    "ShuffleNetV2": {
        "layer1.0.conv5.weight": (58, 58, 1, 1),
        "layer3.3.bn3.weight": (232,),
        "conv2.weight": (1024, 464, 1, 1),
        "linear.weight": (100, 1024),
    },
}

# Total state_dict entries, so no extra module slips in beside the named keys.
MDISTILLER_NUM_KEYS = {
    "resnet8x4": 62,
    "resnet32x4": 206,
    "wrn_40_2": 227,
    "vgg13": 72,
    "MobileNetV2": 320,
    "ResNet50": 320,
    "ShuffleNetV1": 296,
    "ShuffleNetV2": 338,
}


@pytest.mark.parametrize("name", sorted(MDISTILLER_KEYS))
def test_state_dict_layout_matches_mdistiller_checkpoints(name):
    state = _build_on_meta(name, 100).state_dict()
    for key, shape in MDISTILLER_KEYS[name].items():
        assert key in state, f"{name}: missing checkpoint key {key}"
        assert tuple(state[key].shape) == shape, key
    assert len(state) == MDISTILLER_NUM_KEYS[name]


def test_mobilenetv1_layout_matches_mdistiller():
    state = _build_on_meta("MobileNetV1", 1000).state_dict()
    assert tuple(state["model.0.0.weight"].shape) == (32, 3, 3, 3)
    assert tuple(state["model.1.0.weight"].shape) == (32, 1, 3, 3)  # depthwise
    assert tuple(state["model.1.3.weight"].shape) == (64, 32, 1, 1)  # pointwise
    assert tuple(state["model.13.4.running_var"].shape) == (1024,)
    assert tuple(state["fc.weight"].shape) == (1000, 1024)
    assert len(state) == 164


@pytest.mark.parametrize("name", ["resnet18", "resnet34", "resnet50"])
def test_imagenet_resnets_keep_torchvision_state_dict_layout(name):
    with torch.device("meta"):
        reference = getattr(torchvision.models, name)(weights=None)
    state, expected = _build_on_meta(name, 1000).state_dict(), reference.state_dict()
    assert list(state) == list(expected)
    assert all(state[k].shape == expected[k].shape for k in expected)


def test_torchvision_weights_load_strictly_and_give_the_same_logits():
    reference = torchvision.models.resnet18(weights=None).eval()
    model = build_model("resnet18", num_classes=1000).eval()
    model.load_state_dict(reference.state_dict(), strict=True)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x))


def test_fmnist_pair_sizes():
    teacher = _build_on_meta("fmnist_teacher", 10)
    student = _build_on_meta("fmnist_student", 10)
    assert 500_000 <= _num_params(teacher) <= 2_000_000
    assert _num_params(student) < 60_000


def test_unknown_name_lists_valid_names():
    with pytest.raises(KeyError) as excinfo:
        build_model("resnet9000", num_classes=10)
    message = str(excinfo.value)
    assert "resnet9000" in message
    for valid in ("resnet8x4", "wrn_40_2", "vgg13", "MobileNetV2", "fmnist_student"):
        assert valid in message
    # Callers validating arguments can catch it as a ValueError too.
    assert isinstance(excinfo.value, ValueError)
    assert isinstance(excinfo.value, UnknownModelError)
