"""Class prototypes: per-class sums and means of embeddings, and scores against them.

The prototype classifier of ProtoNets (Snell et al., 2017) as the instance test
of Kowadlo et al. (2022) uses it: a class is represented by the mean of its
support embeddings, a query is scored against each mean by minus the Euclidean
distance (``"euclidean"``, the nearest mean wins) or by the dot product
(``"dot"``, the authors' score on unnormalised embeddings).
"""

from __future__ import annotations

import torch
from avalanche.models import NCMClassifier

SCORINGS = ("euclidean", "dot")


def add_class_sums(
    sums: torch.Tensor, counts: torch.Tensor, x: torch.Tensor, y: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Add a batch to the per-class sums ``[C, D]`` and counts ``[C]``, in place; returns them.

    ``x`` ``[n, D]`` in the sums' dtype, ``y`` ``[n]`` integer labels in ``[0, C)``.
    """
    sums.index_add_(0, y, x)
    counts.index_add_(0, y, torch.ones_like(y, dtype=counts.dtype))
    return sums, counts


def class_means(sums: torch.Tensor, counts: torch.Tensor) -> dict[int, torch.Tensor]:
    """``{class: sums[class] / counts[class]}`` (float32) for every class with ``counts > 0``."""
    seen = torch.nonzero(counts > 0).flatten().tolist()
    return {c: (sums[c] / counts[c]).float() for c in seen}


def mean_per_class(z: torch.Tensor, y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``[C, D]`` mean of the rows of ``z`` ``[n, D]`` of each label ``y`` ``[n]`` in ``[0, C)``.

    Differentiable (ProtoNet training). Every class must have at least one row.
    """
    sums = torch.zeros(num_classes, z.shape[1], dtype=z.dtype, device=z.device)
    counts = torch.bincount(y, minlength=num_classes).to(z.dtype)
    if bool((counts == 0).any()):
        raise ValueError("every class in [0, num_classes) needs at least one support item")
    return sums.index_add(0, y, z) / counts.unsqueeze(1)


def prototype_scores(x: torch.Tensor, means: torch.Tensor, scoring: str = "euclidean"
                     ) -> torch.Tensor:
    """``[n, C]`` scores of each row of ``x`` ``[n, D]`` against each mean ``[C, D]``.

    ``"euclidean"``: ``-||x - m_c||`` (the argmax is the nearest mean, as Avalanche's
    ``NCMClassifier`` predicts); ``"dot"``: ``x . m_c``. In the inputs' dtype.
    """
    if scoring == "dot":
        return x @ means.T
    return -torch.cdist(x, means)


def seen_class_scores(x: torch.Tensor, sums: torch.Tensor, counts: torch.Tensor,
                      scoring: str = "euclidean") -> torch.Tensor:
    """:func:`prototype_scores` against ``sums / counts`` (float64), ``-inf`` for unseen classes.

    Returns ``[n, C]`` float32.
    """
    seen = counts > 0
    scores = torch.full((x.shape[0], sums.shape[0]), float("-inf"), dtype=torch.float64,
                        device=x.device)
    means = sums[seen] / counts[seen].unsqueeze(1)
    scores[:, seen] = prototype_scores(x.double(), means.double(), scoring)
    return scores.float()


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
        return prototype_scores(x, self.class_means.to(x.device, x.dtype), "dot")
