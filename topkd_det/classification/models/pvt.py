"""PVT-Tiny (Wang et al., ICCV 2021): a four-stage pyramid (widths 64/128/320/512, 2 blocks each,
1/2/5/8 heads, MLP ratios 8/8/4/4) whose attention shrinks keys and values by 8/4/2/1; patch sizes
4/2/2/2 and a class token added in the last stage."""
from typing import Sequence

import torch
from timm.layers import DropPath, Mlp, trunc_normal_
from timm.models.pvt_v2 import Attention as SpatialReductionAttention
from torch import nn

from .vit_common import VIT_INPUT_SIZE, ViTClassifier, drop_path_rates, init_vit_weights_, layer_norm


class PVTBlock(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float, sr_ratio: int, drop_path: float):
        super().__init__()
        self.norm1 = layer_norm(dim)
        self.attn = SpatialReductionAttention(dim, heads, sr_ratio=sr_ratio, qkv_bias=True)
        self.norm2 = layer_norm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, size) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), size))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PVTStage(nn.Module):
    """Patch embedding (strided conv + layer norm), learned positions, then the blocks."""

    def __init__(self, in_dim: int, dim: int, patch: int, side: int, depth: int, heads: int, mlp_ratio: float,
                 sr_ratio: int, rates: Sequence[float], cls_token: bool):
        super().__init__()
        self.embed = nn.Conv2d(in_dim, dim, kernel_size=patch, stride=patch)
        self.embed_norm = layer_norm(dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim)) if cls_token else None
        self.pos_embed = nn.Parameter(torch.zeros(1, side * side + int(cls_token), dim))
        self.blocks = nn.ModuleList(PVTBlock(dim, heads, mlp_ratio, sr_ratio, rate) for rate in rates)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x)
        n, _, h, w = x.shape
        x = self.embed_norm(x.flatten(2).transpose(1, 2))
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(n, -1, -1), x], dim=1)
        x = x + self.pos_embed
        for block in self.blocks:
            x = block(x, (h, w))
        return x if self.cls_token is not None else x.transpose(1, 2).reshape(n, -1, h, w)


class PVT(ViTClassifier):
    def __init__(self, num_classes: int = 100, img_size: int = VIT_INPUT_SIZE, dims=(64, 128, 320, 512),
                 patches=(4, 2, 2, 2), depths=(2, 2, 2, 2), heads=(1, 2, 5, 8), mlp_ratios=(8, 8, 4, 4),
                 sr_ratios=(8, 4, 2, 1)):
        super().__init__()
        rates, side, in_dim, stages = drop_path_rates(sum(depths)), img_size, 3, []
        for i, (dim, patch, depth, head, mlp, sr) in enumerate(zip(dims, patches, depths, heads, mlp_ratios, sr_ratios)):
            side //= patch
            stages.append(PVTStage(in_dim, dim, patch, side, depth, head, mlp, sr, rates[:depth], i == len(dims) - 1))
            rates, in_dim = rates[depth:], dim
        self.stages = nn.Sequential(*stages)
        self.norm = layer_norm(dims[-1])
        self.fc = nn.Linear(dims[-1], num_classes)
        init_vit_weights_(self)
        for stage in self.stages:
            trunc_normal_(stage.pos_embed, std=0.02)
            if stage.cls_token is not None:
                trunc_normal_(stage.cls_token, std=0.02)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.stages(x))[:, 0]


def pvt_tiny(num_classes: int = 100) -> PVT:
    return PVT(num_classes)
