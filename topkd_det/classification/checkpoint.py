"""Weight files in: state-dict loading that accepts the common checkpoint wrappers and explains a
damaged file or a mismatch instead of printing torch's raw error or key dump."""
import os
from collections import Counter
from typing import Any, Dict, Mapping

import torch
from torch import nn

from ..files import LOAD_ERRORS, is_weights_only_refusal, unreadable_reason
from ..state_dicts import mismatch

# Keys under which training scripts nest the model's state dict: mdistiller/CRD ("model"),
# pytorch-lightning and many others ("state_dict"), older repos ("net").
_WRAPPER_KEYS = ("model", "state_dict", "net")


class WeightsError(ValueError):
    """A weights file that cannot be read, or does not fit the model."""


# What to do about a file that cannot be read, by what it is.
REDOWNLOAD = "download or copy it again, or train it again"


def load_file(path: str, what: str = "weights file", fix: str = REDOWNLOAD) -> Any:
    """``torch.load`` restricted to tensors and plain containers (``weights_only``); MultiStepLR keeps
    its milestones in a ``Counter``, so that one class is allowed too. ``what`` names the file's role
    (a config key) and ``fix`` what to do, in the error of a file that cannot be read."""
    if not os.path.isfile(path):
        raise WeightsError(f"{what}: no such file {path!r}")
    try:
        with torch.serialization.safe_globals([Counter]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except LOAD_ERRORS as err:
        if is_weights_only_refusal(err):
            raise WeightsError(
                f"{what} {path!r} pickles Python objects beyond tensors and plain containers, which are refused "
                "for safety; re-save just the state dict: torch.save(model.state_dict(), path)"
            ) from None
        raise WeightsError(f"{what} {path!r} {unreadable_reason(path, err)}: {fix}") from None


def extract_state_dict(obj: Any, path: str = "<object>") -> Dict[str, torch.Tensor]:
    """The tensor mapping inside a plain state dict or a ``{"model"|"state_dict"|"net": ...}`` checkpoint,
    with DataParallel's ``module.`` prefix removed."""
    while isinstance(obj, Mapping) and not _is_state_dict(obj):
        key = next((k for k in _WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if key is None:
            raise WeightsError(
                f"{path!r} holds neither a state dict nor one under {list(_WRAPPER_KEYS)}; top-level keys: "
                f"{sorted(map(str, obj))[:10]}"
            )
        obj = obj[key]
    if not isinstance(obj, Mapping):
        raise WeightsError(f"{path!r} holds a {type(obj).__name__}, not a state dict")
    state = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def _is_state_dict(obj: Mapping) -> bool:
    return bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def check_fits(model: nn.Module, state: Mapping[str, torch.Tensor], path: str, what: str) -> None:
    """Raise ``WeightsError`` unless ``state`` has exactly ``model``'s keys and shapes."""
    problem = mismatch(model.state_dict(), state)
    if problem:
        raise WeightsError(f"{path!r} does not fit the {what}: {problem}. Check that the architecture name "
                           "matches the checkpoint.")


def load_weights(model: nn.Module, path: str, what: str) -> None:
    """Load ``path`` into ``model`` exactly (every key, every shape); ``what`` names the model in errors
    (e.g. ``"teacher 'resnet32x4' (MODEL.TEACHER_WEIGHTS)"``)."""
    state = extract_state_dict(load_file(path, what), path)
    check_fits(model, state, path, what)
    model.load_state_dict(state)
