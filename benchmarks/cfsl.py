"""Data for many-class CFSL episodes (Kowadlo et al., 2022): 20 classes offline.

The authors run class-level CFSL with 10, 20 and 200 classes. Offline, Fashion-MNIST
has 10; :func:`fashion_and_digits` adds scikit-learn's 10 digit classes for 20
(MNIST itself is not available offline, and no 200-class set of 28x28 images is).
The episodes are :func:`neve.benchmarks.cfsl_episodes` with ``class_interval``.
"""

from __future__ import annotations

import torch
from torch.nn import functional

from ..models.core.checks import Int, OneOf, Seed, validated
from .datasets import LabelledTensorDataset, digits, fashion_mnist


def upsample(images: torch.Tensor, size: int) -> torch.Tensor:
    """``[N, C, h, w]`` images resized to ``[N, C, size, size]`` (bilinear, clamped to [0, 1])."""
    out = functional.interpolate(images, size=(size, size), mode="bilinear",
                                 align_corners=False)
    return out.clamp(0.0, 1.0)


@validated(split=OneOf("train", "test"), size=Int(1), seed=Seed())
def fashion_and_digits(split: str = "test", size: int = 28, seed: int = 0) -> LabelledTensorDataset:
    """20 classes of ``[1, size, size]`` grey images: Fashion-MNIST (labels 0-9) + digits (10-19).

    Fashion-MNIST's ``split`` ("train": 60,000 or "test": 10,000 images) and
    scikit-learn's 8x8 digits of the same split of :func:`neve.benchmarks.digits`
    (``seed``; 1,347 train or 450 test images), upsampled bilinearly to ``size``
    (blurred 8x8 digits, not MNIST). Fashion-MNIST is resized too when ``size`` is
    not 28.
    """
    fm = fashion_mnist()[0 if split == "train" else 1]
    fm_x = fm.data.unsqueeze(1).float() / 255.0
    if size != fm_x.shape[-1]:
        fm_x = upsample(fm_x, size)
    dg = digits(seed=seed)[0 if split == "train" else 1]
    x = torch.cat([fm_x, upsample(dg.data, size)])
    y = torch.cat([torch.as_tensor(fm.targets).long(), dg.targets.long() + 10])
    return LabelledTensorDataset(x, y)
