"""Closed-form analytic class-incremental learning: the ACIL / G-ACIL network.

Papers: Zhuang et al., "ACIL: Analytic Class-Incremental Learning with Absolute
Memorization and Privacy Protection" (NeurIPS 2022), and Zhuang et al.,
"G-ACIL: Analytic Learning for Exemplar-Free Generalized Class Incremental
Learning" (2024).

A frozen feature extractor f, a buffer layer ``B(x) = ReLU(x W_B)`` with a fixed
random ``W_B`` (:class:`BufferLayer`), and a ridge classifier on the buffer
features (:class:`IncrementalRidge`, in :mod:`neve.models.incremental_ridge`)
that equals, after any data seen so far, the joint ridge solution over all of it
(ACIL eq. 6), so nothing is
forgotten and no exemplar is kept. The math is in :mod:`neve.models.ridge`; two
ways to reach the solution:

* ``method="accumulate"`` (default): keep ``A = sum X^T X`` and ``C = sum X^T Y``
  and solve when predictions are needed, with a cached Cholesky factorisation.
  It costs the lower triangle of one ``X^T X`` per batch, and it is the only form
  whose statistics can be summed across workers;
* ``method="woodbury"``: keep ``R = (X^T X + gamma I)^-1`` and ``W`` and update
  both per mini-batch with the Woodbury identity (ACIL eq. 10-11, G-ACIL eq.
  9-10), which rewrites all of ``R`` per batch. Its rounding error grows with
  ``trace(X^T X) / gamma``; batches beyond ``WOODBURY_LIMIT`` are refused.

Inside their ranges both give the same ``W`` up to rounding (``tests/test_analytic.py``);
``bench/analytic.py`` times them.

Several processes: :meth:`IncrementalRidge.partial_fit` sums each batch's
``X^T X`` and ``X^T Y`` over the processes and agrees on the class count, so N
workers fed disjoint shards end with the ``W`` of one process fed everything.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from .core.checks import Instance, Int, OneOf, Seed, validated
from .core.data_checks import check_features
from .incremental_ridge import DEFAULT_MAX_CLASSES, IncrementalRidge, keep_float64

__all__ = ["AnalyticClassifier", "BufferLayer", "IncrementalRidge"]

PROJECTION_DTYPE = OneOf(torch.float64, torch.float32)

# ----------------------------------------------------------------------------- modules
class BufferLayer(nn.Module):
    """``ReLU(x W_B)`` with a fixed random ``W_B`` in float64 (ACIL sec. 3.2, the buffer layer).

    ``W_B`` ``[in_features, buffer_size]`` is drawn once, ``N(0, 1/in_features)``,
    from ``seed`` (from torch's global generator when ``seed`` is None), and kept
    as a buffer: it is saved in ``state_dict`` and never trained.

    The output is float64 either way. ``projection_dtype=torch.float32`` computes
    the product ``x W_B`` in float32 (with ``W_B`` rounded to float32) and casts the
    result: faster, and the product costs ``n d b`` flops, more than the
    statistics' ``n b^2 / 2`` when ``b < 2 d``. The buffer features then differ
    from the float64 ones by float32 rounding; the classifier is still the exact
    ridge solution *for the features it was given*, so the incremental and joint
    solutions stay equal.

    Args:
        in_features: size ``d`` of the backbone's features.
        buffer_size: size ``b`` of the buffer features.
        seed: seed of ``W_B``.
        projection_dtype: ``torch.float64`` (default) or ``torch.float32``, the
            precision of the product ``x W_B``.
    """

    checkpointed = ("in_features", "buffer_size", "projection_dtype")

    @validated(in_features=Int(1), buffer_size=Int(1), seed=Seed(optional=True),
               projection_dtype=PROJECTION_DTYPE)
    def __init__(
        self,
        in_features: int,
        buffer_size: int,
        *,
        seed: int | None = None,
        projection_dtype: torch.dtype = torch.float64,
    ) -> None:
        super().__init__()
        self.in_features = in_features
        self.buffer_size = buffer_size
        self.projection_dtype = projection_dtype
        gen = None if seed is None else torch.Generator().manual_seed(seed)
        weight = torch.randn(
            self.in_features, self.buffer_size, generator=gen, dtype=torch.float64
        ) / math.sqrt(self.in_features)
        self.register_buffer("weight", weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[n, in_features]`` -> ``[n, buffer_size]`` float64."""
        check_features(x, "x (backbone features)", dim=self.in_features,
                       dim_name="in_features")
        dtype = self.projection_dtype
        out = torch.relu(x.to(dtype) @ self.weight.to(dtype)).to(torch.float64)
        if dtype != torch.float64 and out.numel() and not bool(torch.isfinite(out.sum())):
            if not bool(torch.isfinite(out).all()):
                raise ValueError(
                    "x (backbone features) overflows the float32 product x W_B of "
                    "projection_dtype=torch.float32; use projection_dtype=torch.float64 "
                    "or rescale the features"
                )
        return out

    def _apply(self, fn, *args, **kwargs):
        return super()._apply(keep_float64(fn), *args, **kwargs)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, buffer_size={self.buffer_size}, "
            f"projection_dtype={self.projection_dtype}"
        )


class AnalyticClassifier(nn.Module):
    """``head(buffer(backbone(x)))``: ACIL's network, frozen backbone to closed-form head.

    Args:
        backbone: maps a batch of the dataset's inputs to ``[n, feature_dim]``
            (``nn.Identity()`` for precomputed features).
        feature_dim: the backbone's output size.
        buffer_size, gamma, seed, method, projection_dtype, max_classes: of
            :class:`BufferLayer` and :class:`IncrementalRidge` (checked there).

    ``load_state_dict`` is all or nothing: when any part is refused, every part
    keeps its state.

    ``forward`` returns float32 logits ``[n, max(1, num_classes)]`` (a single zero
    column before any class is learned, so Avalanche's metrics still work).
    """

    checkpointed = ("feature_dim",)

    @validated(backbone=Instance(nn.Module, what="an nn.Module"), feature_dim=Int(1))
    def __init__(
        self,
        backbone: nn.Module,
        feature_dim: int,
        *,
        buffer_size: int = 4096,
        gamma: float = 1.0,
        seed: int | None = 0,
        method: str = "accumulate",
        projection_dtype: torch.dtype = torch.float64,
        max_classes: int = DEFAULT_MAX_CLASSES,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.feature_dim = feature_dim
        self.buffer = BufferLayer(
            feature_dim, buffer_size, seed=seed, projection_dtype=projection_dtype
        )
        self.head = IncrementalRidge(
            buffer_size, gamma=gamma, method=method, max_classes=max_classes
        )

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """``nn.Module.load_state_dict``, rolled back whole when any part raises."""
        saved = {
            k: v.detach().clone() if isinstance(v, torch.Tensor) else copy.deepcopy(v)
            for k, v in self.state_dict().items()
        }
        try:
            return super().load_state_dict(state_dict, strict=strict, assign=assign)
        except BaseException:
            super().load_state_dict(saved, strict=False)
            raise

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Backbone features ``[n, feature_dim]``, checked against ``feature_dim``."""
        out = self.backbone(x)
        if out.dim() != 2 or out.shape[1] != self.feature_dim:
            raise ValueError(
                f"the backbone's output has shape {tuple(out.shape)}, but feature_dim="
                f"{self.feature_dim} expects [n, {self.feature_dim}]: pass the backbone's "
                "feature size as feature_dim"
            )
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.head(self.buffer(self.features(x))).float()
        if logits.shape[1] == 0:
            return logits.new_zeros(logits.shape[0], 1)
        return logits
