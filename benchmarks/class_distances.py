"""The Curriculum Designer's class-to-class distances, by name.

Each distance maps the class prototypes ``[C, D]`` and the per-class feature
samples (``C`` tensors ``[n_c, D]``, row order) to a ``[C, C]`` float64 matrix of
non-negative distances; :class:`~neve.benchmarks.CurriculumDesigner` normalises
its full rows (diagonal included) and takes their variances. Add one with
:func:`register_distance`::

    @register_distance("manhattan")
    def manhattan(prototypes, samples):
        return torch.cdist(prototypes, prototypes, p=1).numpy()
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from .curriculum_score import prototype_distances
from .otdd import otdd_distances, w2_distances

ClassDistance = Callable[[torch.Tensor, Sequence[torch.Tensor]], np.ndarray]
CLASS_DISTANCES: dict[str, ClassDistance] = {}


def register_distance(name: str) -> Callable[[ClassDistance], ClassDistance]:
    """Decorator: make ``function(prototypes, samples)`` the distance ``name``."""
    if not isinstance(name, str) or not name:
        raise TypeError(f"name must be a non-empty str, got {name!r}")

    def register(function: ClassDistance) -> ClassDistance:
        if name in CLASS_DISTANCES:
            raise ValueError(f"a class distance named {name!r} is already registered")
        CLASS_DISTANCES[name] = function
        return function

    return register


@register_distance("cosine")
def cosine(prototypes: torch.Tensor, samples: Sequence[torch.Tensor]) -> np.ndarray:
    """``1 - cos`` between prototypes (the paper's default)."""
    return prototype_distances(prototypes, "cosine")


@register_distance("euclidean")
def euclidean(prototypes: torch.Tensor, samples: Sequence[torch.Tensor]) -> np.ndarray:
    """Euclidean distance between prototypes."""
    return prototype_distances(prototypes, "euclidean")


@register_distance("otdd")
def otdd(prototypes: torch.Tensor, samples: Sequence[torch.Tensor]) -> np.ndarray:
    """OTDD, exact: EMD feature part, exact label term (the reference's ``eps -> 0`` limit).

    Within ``1.5 eps log n`` of the reference's entropic value (:mod:`neve.benchmarks.otdd`).
    """
    return otdd_distances(samples, method="exact", label="exact")


@register_distance("otdd_entropic")
def otdd_entropic(prototypes: torch.Tensor, samples: Sequence[torch.Tensor]) -> np.ndarray:
    """OTDD as Learning2Learn computes it: debiased Sinkhorn (eps 0.1), entropic label term.

    Sinkhorn needs of the order of ``max cost / eps`` iterations: for features whose
    squared distances are small (pixels in [0, 1], a few dimensions).
    """
    return otdd_distances(samples, method="debiased", label="entropic")


@register_distance("otdd_gaussian")
def otdd_gaussian(prototypes: torch.Tensor, samples: Sequence[torch.Tensor]) -> np.ndarray:
    """OTDD with the Gaussian (Bures-Wasserstein) label term, exact feature part."""
    return otdd_distances(samples, method="exact", label="gaussian")


@register_distance("w2")
def w2(prototypes: torch.Tensor, samples: Sequence[torch.Tensor]) -> np.ndarray:
    """2-Wasserstein distance between the classes' samples, no label term, zero diagonal."""
    return w2_distances(samples)
