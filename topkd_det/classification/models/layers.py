"""Small pieces shared by several architectures of the zoo."""

from typing import List, Optional

import torch
from torch import nn


def init_weights_(model: nn.Module, linear_std: Optional[float] = None) -> None:
    """The initialisation the CRD/mdistiller zoo trains its teachers from.

    Convs get He-normal (fan-out) weights, norms start as identity. Linear layers keep PyTorch's
    default unless ``linear_std`` is given, as VGG and MobileNetV2 draw them from N(0, std).
    """
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear) and linear_std is not None:
            nn.init.normal_(m.weight, 0.0, linear_std)
            nn.init.zeros_(m.bias)


def conv_bn_relu(cin: int, cout: int, kernel: int, stride: int, groups: int = 1) -> List[nn.Module]:
    """A "same"-padded bias-free conv, BN and ReLU, as a list so callers choose the nesting
    (and with it the checkpoint key paths)."""
    return [
        nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    ]


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """Interleave channels across groups so grouped convs see every group's output."""
    n, c, h, w = x.shape
    return x.reshape(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


def global_avg_pool(x: torch.Tensor) -> torch.Tensor:
    """N x C x H x W -> N x C.

    The zoo pools with fixed kernels (8, 4, ...) that equal the final map size at 32x32; the
    adaptive form gives the same numbers there and also accepts other input sizes.
    """
    return torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)
