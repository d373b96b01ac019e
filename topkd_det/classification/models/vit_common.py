"""What the four ViT students share: the classifier contract, the setting's block, and the init.

The students are those of the locality-guidance setting for tiny datasets (Li et al., ECCV 2022, code
``tiny-transformers``; logit standardisation runs its transformer experiments on it): trained from
scratch on CIFAR-100 resized to 224 px. Blocks come from timm; the assemblies are this project's.
"""
from functools import partial

import torch
from timm.layers import trunc_normal_
from timm.models.vision_transformer import Block
from torch import nn

from .base import FeatureClassifier

VIT_INPUT_SIZE = 224
# The setting's stochastic-depth rate (TRANSFORMER.DROP_PATH_RATE); dropout and attention dropout are 0.
DROP_PATH_RATE = 0.1
layer_norm = partial(nn.LayerNorm, eps=1e-6)


class ViTClassifier(FeatureClassifier):
    """A transformer whose penultimate feature is its normalised class token (the head is ``fc``)."""


def drop_path_rates(depth: int, rate: float = DROP_PATH_RATE):
    """Stochastic depth rising linearly from 0 to ``rate`` over the blocks."""
    return [x.item() for x in torch.linspace(0, rate, depth)]


def transformer_block(dim: int, heads: int, mlp_ratio: float, qkv_bias: bool, drop_path: float) -> Block:
    return Block(dim, heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, drop_path=drop_path, norm_layer=layer_norm)


def init_vit_weights_(module: nn.Module) -> None:
    """Truncated-normal (std 0.02) linear weights with zero biases, identity layer norms (DeiT's init)."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
