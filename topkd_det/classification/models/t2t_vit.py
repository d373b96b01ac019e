"""T2T-ViT-7 (Yuan et al., ICCV 2021): a tokens-to-token stem (unfold 7/4, then two performer layers each
followed by unfold 3/2) feeding 7 blocks of width 256, 4 heads, MLP ratio 2, fixed sinusoidal positions."""
import math

import torch
from timm.layers import trunc_normal_
from torch import nn

from .vit_common import VIT_INPUT_SIZE, ViTClassifier, drop_path_rates, init_vit_weights_, layer_norm, transformer_block


class TokenPerformer(nn.Module):
    """One-head performer attention (positive random features, ``kernel_ratio`` × width of them) from
    ``dim`` input channels to ``width``, with a residual on the values, then an MLP: the T2T stem layer."""

    def __init__(self, dim: int, width: int, kernel_ratio: float = 0.5):
        super().__init__()
        self.width = width
        self.norm1 = layer_norm(dim)
        self.kqv = nn.Linear(dim, 3 * width)
        self.proj = nn.Linear(width, width)
        self.norm2 = layer_norm(width)
        self.mlp = nn.Sequential(nn.Linear(width, width), nn.GELU(), nn.Linear(width, width))
        features = int(width * kernel_ratio)
        # Fixed random projection (not trained): orthogonal rows scaled by sqrt(m), as the T2T authors.
        self.register_buffer("features", nn.init.orthogonal_(torch.empty(features, width)) * math.sqrt(features))

    def _positive_features(self, x: torch.Tensor) -> torch.Tensor:
        m = self.features.shape[0]
        return torch.exp(x.float() @ self.features.t() - (x.float() ** 2).sum(-1, keepdim=True) / 2) / math.sqrt(m)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k, q, v = self.kqv(self.norm1(x)).split(self.width, dim=-1)
        kp, qp = self._positive_features(k), self._positive_features(q)
        normaliser = qp @ kp.sum(dim=1, keepdim=True).transpose(1, 2)            # (N, T, 1)
        attended = (qp @ (kp.transpose(1, 2) @ v.float())) / (normaliser + 1e-8)  # (N, T, width)
        x = v + self.proj(attended.to(v.dtype))
        return x + self.mlp(self.norm2(x))


def sinusoid_positions(count: int, dim: int) -> torch.Tensor:
    """The fixed sin/cos table of "Attention is all you need", (1, count, dim)."""
    position = torch.arange(count, dtype=torch.float64).unsqueeze(1)
    rates = torch.pow(10000.0, -2.0 * (torch.arange(dim) // 2) / dim).double()
    angles = position * rates
    table = torch.where(torch.arange(dim) % 2 == 0, angles.sin(), angles.cos())
    return table.float().unsqueeze(0)


class T2TViT(ViTClassifier):
    def __init__(self, num_classes: int = 100, img_size: int = VIT_INPUT_SIZE, dim: int = 256, depth: int = 7,
                 heads: int = 4, mlp_ratio: float = 2.0, token_dim: int = 64):
        super().__init__()
        self.split0 = nn.Unfold(kernel_size=7, stride=4, padding=2)
        self.performer1 = TokenPerformer(3 * 7 * 7, token_dim)
        self.split1 = nn.Unfold(kernel_size=3, stride=2, padding=1)
        self.performer2 = TokenPerformer(token_dim * 3 * 3, token_dim)
        self.split2 = nn.Unfold(kernel_size=3, stride=2, padding=1)
        self.project = nn.Linear(token_dim * 3 * 3, dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        side = img_size // 16
        self.register_buffer("pos_embed", sinusoid_positions(side * side + 1, dim))
        self.blocks = nn.Sequential(*(transformer_block(dim, heads, mlp_ratio, False, rate)
                                      for rate in drop_path_rates(depth)))
        self.norm = layer_norm(dim)
        self.fc = nn.Linear(dim, num_classes)
        init_vit_weights_(self)
        trunc_normal_(self.cls_token, std=0.02)

    @staticmethod
    def _restructure(tokens: torch.Tensor, split: nn.Unfold) -> torch.Tensor:
        """Tokens (N, H·W, C) back to an image (N, C, H, W), then unfolded into (N, H'·W', C·k²) tokens."""
        n, length, channels = tokens.shape
        side = math.isqrt(length)
        return split(tokens.transpose(1, 2).reshape(n, channels, side, side)).transpose(1, 2)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.split0(x).transpose(1, 2)
        x = self._restructure(self.performer1(x), self.split1)
        x = self._restructure(self.performer2(x), self.split2)
        x = self.project(x)
        x = torch.cat([self.cls_token.expand(len(x), -1, -1), x], dim=1) + self.pos_embed
        return self.norm(self.blocks(x))[:, 0]


def t2t_vit_7(num_classes: int = 100) -> T2TViT:
    return T2TViT(num_classes)
