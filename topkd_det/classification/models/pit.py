"""PiT-Ti (Heo et al., ICCV 2021): a pooling ViT. A 16-px conv embedding with stride 8, three stages of
widths 64/128/256 (2/6/4 blocks, 2/4/8 heads) joined by depthwise-conv pooling; the class token passes
through a linear layer at each pooling."""
import torch
from timm.layers import trunc_normal_
from torch import nn

from .vit_common import VIT_INPUT_SIZE, ViTClassifier, drop_path_rates, init_vit_weights_, layer_norm, transformer_block


class TokenPooling(nn.Module):
    """Halves the token grid with a stride-2 conv (one group per input channel) and widens the class token."""

    def __init__(self, dim: int, out_dim: int):
        super().__init__()
        self.conv = nn.Conv2d(dim, out_dim, kernel_size=3, stride=2, padding=1, groups=dim)
        self.fc = nn.Linear(dim, out_dim)

    def forward(self, grid: torch.Tensor, cls: torch.Tensor):
        return self.conv(grid), self.fc(cls)


class PiT(ViTClassifier):
    def __init__(self, num_classes: int = 100, img_size: int = VIT_INPUT_SIZE, patch_size: int = 16, stride: int = 8,
                 dims=(64, 128, 256), depths=(2, 6, 4), heads=(2, 4, 8), mlp_ratio: float = 4.0):
        super().__init__()
        side = (img_size - patch_size) // stride + 1
        self.patch_embed = nn.Conv2d(3, dims[0], kernel_size=patch_size, stride=stride)
        self.pos_embed = nn.Parameter(torch.zeros(1, dims[0], side, side))
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dims[0]))
        rates = iter(drop_path_rates(sum(depths)))
        self.stages = nn.ModuleList(
            nn.Sequential(*(transformer_block(dim, head, mlp_ratio, True, next(rates)) for _ in range(depth)))
            for dim, depth, head in zip(dims, depths, heads))
        self.pools = nn.ModuleList(TokenPooling(a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.norm = layer_norm(dims[-1])
        self.fc = nn.Linear(dims[-1], num_classes)
        init_vit_weights_(self)
        trunc_normal_(self.pos_embed, std=0.02)
        trunc_normal_(self.cls_token, std=0.02)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        grid = self.patch_embed(x) + self.pos_embed
        cls = self.cls_token.expand(len(x), -1, -1)
        for i, stage in enumerate(self.stages):
            n, c, h, w = grid.shape
            tokens = stage(torch.cat([cls, grid.flatten(2).transpose(1, 2)], dim=1))
            cls, grid = tokens[:, :1], tokens[:, 1:].transpose(1, 2).reshape(n, c, h, w)
            if i < len(self.pools):
                grid, cls = self.pools[i](grid, cls)
        return self.norm(cls)[:, 0]


def pit_tiny(num_classes: int = 100) -> PiT:
    return PiT(num_classes)
