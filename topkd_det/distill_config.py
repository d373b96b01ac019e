"""The distillation knobs of ``topkd_det.core`` as a yacs ``CfgNode`` (upper-case keys).

Classification (``cfg.DISTILL``) and detection (``cfg.MODEL.DISTILL``) both mount this node, so a
knob has one name, one default and one meaning everywhere; ``build_loss`` reads it back.
"""
from typing import Any, Dict

from yacs.config import CfgNode as CN

from .core import LOSS_DEFAULTS


def _to_node(tree: Dict[str, Any]) -> CN:
    node = CN()
    for key, value in tree.items():
        setattr(node, key.upper(), _to_node(value) if isinstance(value, dict) else value)
    return node


def distill_cfg_node() -> CN:
    """A fresh node with every distillation default (see the README's knob table)."""
    return _to_node(LOSS_DEFAULTS)
