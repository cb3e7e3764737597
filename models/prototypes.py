"""Prototype classifiers scored by dot product, as the authors' ProtoNets (Kowadlo et al., 2022)."""

from __future__ import annotations

import torch
from avalanche.models import NCMClassifier


class DotProductNCM(NCMClassifier):
    """Avalanche's ``NCMClassifier`` scoring by dot product instead of minus the distance.

    ``forward(x)`` returns ``[B, C]`` scores ``x @ class_means.T`` (``x``
    L2-normalised first when ``normalize``); the argmax is the class whose
    mean has the largest dot product with the query. Classes without a mean
    hold Avalanche's zero vector and score 0. Means are set as for
    ``NCMClassifier`` (``replace_class_means_dict``) and saved in its
    ``class_means`` buffer.
    """

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.class_means_dict == {}:
            self.init_missing_classes(range(self.max_class + 1), x.shape[1], x.device)
        if self.normalize:
            x = torch.nn.functional.normalize(x, dim=1)
        return x @ self.class_means.to(x.device, x.dtype).T
