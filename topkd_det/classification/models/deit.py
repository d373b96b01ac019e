"""DeiT-Ti (Touvron et al., ICML 2021): a plain ViT, 16-px patches, width 192, 12 blocks of 3 heads."""
import torch
from timm.layers import PatchEmbed, trunc_normal_
from torch import nn

from .vit_common import VIT_INPUT_SIZE, ViTClassifier, drop_path_rates, init_vit_weights_, layer_norm, transformer_block


class DeiT(ViTClassifier):
    def __init__(self, num_classes: int = 100, img_size: int = VIT_INPUT_SIZE, patch_size: int = 16,
                 dim: int = 192, depth: int = 12, heads: int = 3, mlp_ratio: float = 4.0):
        super().__init__()
        self.patch_embed = PatchEmbed(img_size, patch_size, 3, dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.patch_embed.num_patches + 1, dim))
        self.blocks = nn.Sequential(*(transformer_block(dim, heads, mlp_ratio, True, rate)
                                      for rate in drop_path_rates(depth)))
        self.norm = layer_norm(dim)
        self.fc = nn.Linear(dim, num_classes)
        init_vit_weights_(self)
        trunc_normal_(self.cls_token, std=0.02)
        trunc_normal_(self.pos_embed, std=0.02)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        x = torch.cat([self.cls_token.expand(len(x), -1, -1), x], dim=1) + self.pos_embed
        return self.norm(self.blocks(x))[:, 0]


def deit_tiny(num_classes: int = 100) -> DeiT:
    return DeiT(num_classes)
