"""The forward contract every classifier of the zoo follows."""

from typing import Tuple, Union

import torch
from torch import nn


class FeatureClassifier(nn.Module):
    """A backbone ending in one ``nn.Linear`` head, able to return that head's input.

    Feature-based distillers need the penultimate vector next to the logits; returning it from
    ``forward`` spares them hooks and per-architecture plumbing.
    Subclasses implement ``forward_features`` and name their head in ``head_name``; the name is the
    one the source zoo used, so its checkpoints keep loading.
    """

    head_name = "fc"

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate feature vector, N x feature_dim."""
        raise NotImplementedError

    @property
    def head(self) -> nn.Linear:
        return self.get_submodule(self.head_name)

    @property
    def feature_dim(self) -> int:
        return self.head.in_features

    def forward(
        self, x: torch.Tensor, return_features: bool = False
    ) -> Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
        feats = self.forward_features(x)
        logits = self.head(feats)
        return (logits, feats) if return_features else logits
