"""The distillation knobs of ``topkd_det.core`` as a yacs ``CfgNode`` (upper-case keys).

Classification (``cfg.DISTILL``) and detection (``cfg.MODEL.DISTILL``) both mount this node, so a
knob has one name, one default and one meaning everywhere; ``build_loss`` reads it back.
"""
from typing import Any, Dict, Type

from yacs.config import CfgNode as CN

from .core import LOSS_DEFAULTS


def _to_node(tree: Dict[str, Any], node_cls: Type[CN]) -> CN:
    node = node_cls()
    for key, value in tree.items():
        setattr(node, key.upper(), _to_node(value, node_cls) if isinstance(value, dict) else value)
    return node


def distill_cfg_node(node_cls: Type[CN] = CN) -> CN:
    """A fresh node with every distillation default (see docs/knobs.md).

    ``node_cls`` lets Detectron2 configs keep one node class throughout (its CfgNode subclasses yacs').
    """
    return _to_node(LOSS_DEFAULTS, node_cls)
