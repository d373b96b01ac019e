"""MobileNetV2-FPN student backbone for Detectron2.

The bottom-up network mirrors torchvision's ``MobileNetV2.features`` block for block, so ImageNet
weights convert one-to-one (``topkd_det.detection.convert``). Its blocks are grouped into stages by
output stride, ResNet-style, so FPN and ``FREEZE_AT`` treat it like Detectron2's ResNets:

    stage  torchvision features  stride  channels (width 1.0)
    stem   0-1                   2       16
    m2     2-3                   4       24
    m3     4-6                   8       32
    m4     7-13                  16      96
    m5     14-18                 32      1280
"""
import math
from typing import List, NamedTuple, Optional

import fvcore.nn.weight_init as weight_init
import torch.nn.functional as F
from torch import nn

from detectron2.config import CfgNode as CN
from detectron2.layers import CNNBlockBase, Conv2d, ShapeSpec, get_norm
from detectron2.modeling import BACKBONE_REGISTRY, Backbone
from detectron2.modeling.backbone.fpn import FPN, LastLevelMaxPool

__all__ = [
    "BlockSpec",
    "MobileNetV2",
    "add_mobilenet_config",
    "build_mobilenetv2_fpn_backbone",
    "mobilenetv2_block_specs",
]

# torchvision's table: expansion t, output channels c, repeats n, stride of the first repeat s.
_INVERTED_RESIDUAL_SETTING = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


def add_mobilenet_config(cfg):
    cfg.MODEL.MOBILENET = CN()
    cfg.MODEL.MOBILENET.WIDTH_MULT = 1.0
    # FrozenBN like Detectron2's ResNets: detection batches are too small for useful BN statistics.
    # Use "BN"/"SyncBN"/"GN" to train from scratch.
    cfg.MODEL.MOBILENET.NORM = "FrozenBN"
    # Stages frozen from the input side (1 = stem, 2 = stem + m2, ...), like MODEL.BACKBONE.FREEZE_AT.
    cfg.MODEL.MOBILENET.FREEZE_AT = 2
    cfg.MODEL.MOBILENET.OUT_FEATURES = ["m2", "m3", "m4", "m5"]


class BlockSpec(NamedTuple):
    stage: str
    in_channels: int
    out_channels: int
    stride: int
    kernel_size: int
    expand_ratio: Optional[int]  # None: a plain conv-norm-ReLU6 layer, not an inverted residual


def _make_divisible(value: float, divisor: int = 8) -> int:
    # torchvision's rounding, so every width multiplier gives torchvision's channel counts.
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


def _stage_name(stride: int) -> str:
    return "stem" if stride <= 2 else f"m{int(math.log2(stride))}"


def mobilenetv2_block_specs(width_mult: float = 1.0, in_channels: int = 3) -> List[BlockSpec]:
    """One spec per entry of torchvision's ``MobileNetV2.features``, in the same order."""
    channels = _make_divisible(32 * width_mult)
    specs = [BlockSpec("stem", in_channels, channels, 2, 3, None)]
    stride = 2
    for t, c, n, s in _INVERTED_RESIDUAL_SETTING:
        out_channels = _make_divisible(c * width_mult)
        for i in range(n):
            block_stride = s if i == 0 else 1
            stride *= block_stride
            specs.append(BlockSpec(_stage_name(stride), channels, out_channels, block_stride, 3, t))
            channels = out_channels
    last_channels = _make_divisible(1280 * max(1.0, width_mult))
    specs.append(BlockSpec(_stage_name(stride), channels, last_channels, 1, 1, None))
    return specs


def _conv_norm(in_channels, out_channels, kernel_size, norm, stride=1, groups=1, activation=F.relu6):
    conv = Conv2d(
        in_channels,
        out_channels,
        kernel_size,
        stride=stride,
        padding=(kernel_size - 1) // 2,
        groups=groups,
        bias=False,
        norm=get_norm(norm, out_channels),
        activation=activation,
    )
    weight_init.c2_msra_fill(conv)  # torchvision's MobileNetV2 init: kaiming normal, fan_out
    return conv


class ConvNormAct(CNNBlockBase):
    def __init__(self, in_channels, out_channels, *, kernel_size, stride, norm):
        super().__init__(in_channels, out_channels, stride)
        self.conv = _conv_norm(in_channels, out_channels, kernel_size, norm, stride=stride)

    def forward(self, x):
        return self.conv(x)


class InvertedResidual(CNNBlockBase):
    def __init__(self, in_channels, out_channels, *, stride, expand_ratio, norm):
        super().__init__(in_channels, out_channels, stride)
        hidden = int(round(in_channels * expand_ratio))
        self.expand = _conv_norm(in_channels, hidden, 1, norm) if expand_ratio != 1 else None
        self.depthwise = _conv_norm(hidden, hidden, 3, norm, stride=stride, groups=hidden)
        # Linear bottleneck: ReLU6 here would destroy information in the narrow projection.
        self.project = _conv_norm(hidden, out_channels, 1, norm, activation=None)
        self.use_residual = stride == 1 and in_channels == out_channels

    def forward(self, x):
        out = x if self.expand is None else self.expand(x)
        out = self.project(self.depthwise(out))
        return x + out if self.use_residual else out


def _group_norm(channels):
    # Detectron2's "GN" fixes 32 groups; MobileNetV2 widths such as 16, 24 and 144 are not multiples.
    return nn.GroupNorm(math.gcd(32, channels), channels)


def _build_block(spec: BlockSpec, norm) -> CNNBlockBase:
    if spec.expand_ratio is None:
        return ConvNormAct(
            spec.in_channels,
            spec.out_channels,
            kernel_size=spec.kernel_size,
            stride=spec.stride,
            norm=norm,
        )
    return InvertedResidual(
        spec.in_channels,
        spec.out_channels,
        stride=spec.stride,
        expand_ratio=spec.expand_ratio,
        norm=norm,
    )


class MobileNetV2(Backbone):
    """MobileNetV2 (Sandler et al. 2018) with stages "stem", "m2", ..., "m5" as outputs."""

    def __init__(
        self,
        *,
        in_channels=3,
        width_mult=1.0,
        norm="FrozenBN",
        out_features=("m2", "m3", "m4", "m5"),
        freeze_at=0,
    ):
        """
        Args:
            norm (str or callable): any of Detectron2's `get_norm` names; "GN" uses the largest
                group count up to 32 that divides each layer's width.
            out_features (list[str]): stages to return, any of "stem", "m2", "m3", "m4", "m5".
            freeze_at (int): number of stages to freeze, counting the stem as 1; see :meth:`freeze`.
        """
        super().__init__()
        norm = _group_norm if norm == "GN" else norm
        specs = mobilenetv2_block_specs(width_mult, in_channels)
        stage_names = list(dict.fromkeys(spec.stage for spec in specs))
        unknown = [f for f in out_features if f not in stage_names]
        assert not unknown, f"Unknown MobileNetV2 out_features {unknown}; available: {stage_names}"
        # Stages past the deepest output are not built: parameters without gradients break DDP.
        self.stage_names = stage_names[: max(stage_names.index(f) for f in out_features) + 1]

        self._out_features = list(out_features)
        self._out_feature_strides = {}
        self._out_feature_channels = {}
        stride = 1
        for name in self.stage_names:
            blocks = [_build_block(spec, norm) for spec in specs if spec.stage == name]
            self.add_module(name, nn.Sequential(*blocks))
            stride *= math.prod(block.stride for block in blocks)
            self._out_feature_strides[name] = stride
            self._out_feature_channels[name] = blocks[-1].out_channels
        self.freeze(freeze_at)

    def forward(self, x):
        assert x.dim() == 4, f"MobileNetV2 takes an input of shape (N, C, H, W). Got {x.shape}!"
        outputs = {}
        for name in self.stage_names:
            x = getattr(self, name)(x)
            if name in self._out_features:
                outputs[name] = x
        return outputs

    def freeze(self, freeze_at=0):
        """
        Freeze the first `freeze_at` stages (1 = stem, 2 = stem + m2, ...) as Detectron2's
        ResNet.freeze does: no gradients, and BatchNorm turned into FrozenBatchNorm2d.
        """
        for name in self.stage_names[:freeze_at]:
            for block in getattr(self, name):
                block.freeze()
        return self


@BACKBONE_REGISTRY.register()
def build_mobilenetv2_fpn_backbone(cfg, input_shape: ShapeSpec):
    bottom_up = MobileNetV2(
        in_channels=input_shape.channels,
        width_mult=cfg.MODEL.MOBILENET.WIDTH_MULT,
        norm=cfg.MODEL.MOBILENET.NORM,
        out_features=cfg.MODEL.MOBILENET.OUT_FEATURES,
        freeze_at=cfg.MODEL.MOBILENET.FREEZE_AT,
    )
    return FPN(
        bottom_up=bottom_up,
        in_features=cfg.MODEL.FPN.IN_FEATURES,
        out_channels=cfg.MODEL.FPN.OUT_CHANNELS,
        norm=cfg.MODEL.FPN.NORM,
        top_block=LastLevelMaxPool(),
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
    )
