"""Checks of the data that comes in: tensors, class labels, features.

The argument constraints and ``@validated`` are in :mod:`neve.models.core.checks`;
this module holds the checks of data (``check_labels``: neve's one label rule,
``check_features``) and the constraints built on them (:class:`Tensor`,
:class:`Labels`), which ``@validated`` tables use like any other.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .checks import Constraint


class Tensor(Constraint):
    """A ``torch.Tensor`` with at least ``min_dim`` dimensions (``[N, ...]`` by default)."""

    def __init__(self, min_dim: int = 1, *, optional: bool = False) -> None:
        self.min_dim, self.optional = min_dim, optional

    def _expected(self) -> str:
        return {0: "a tensor", 1: "a tensor [N, ...]"}.get(
            self.min_dim, f"a tensor of at least {self.min_dim} dimensions")

    def _check(self, value: Any, name: str) -> torch.Tensor:
        if not isinstance(value, torch.Tensor) or value.dim() < self.min_dim:
            raise TypeError(f"{name} must be {self.expected()}, got {type(value).__name__}")
        return value


class Labels(Constraint):
    """Integer class labels: :func:`check_labels`, a 1-d int64 tensor of values ``>= 0``."""

    def _expected(self) -> str:
        return "integer class labels [N], >= 0"

    def _check(self, value: Any, name: str) -> torch.Tensor:
        return check_labels(value, name)


def check_labels(targets: Any, name: str = "targets", *, n: int | None = None,
                 below: int | None = None, cap: str | None = None) -> torch.Tensor:
    """``targets`` as a 1-d int64 tensor of integer class labels ``>= 0``: neve's one label rule.

    Labels must have an integer dtype (Python ints, numpy or torch integers): float
    labels are refused, whole or not, so nothing is ever truncated. ``n``: the length
    they must have; ``below``: the bound every label must be under (a class cap),
    ``cap`` its name (e.g. ``"max_classes"``) for the message.
    """
    if isinstance(targets, (str, bytes)):
        raise TypeError(f"{name} must be integer class labels, got {targets!r}")
    try:
        if not isinstance(targets, (torch.Tensor, np.ndarray, list, tuple)):
            targets = list(targets)  # e.g. an Avalanche DataAttribute
        t = torch.as_tensor(targets)
    except (TypeError, ValueError, RuntimeError) as err:
        kind = type(targets).__name__
        raise TypeError(f"{name} must be integer class labels, got {kind}") from err
    if t.dim() != 1 or (n is not None and t.shape[0] != n):
        want = "[N]" if n is None else f"[{n}]"
        raise ValueError(f"{name} must be 1-d {want}, got shape {tuple(t.shape)}")
    if t.dtype == torch.bool or t.is_complex():
        raise TypeError(f"{name} must be integer class labels, got dtype {t.dtype}")
    if t.is_floating_point():
        whole = bool(torch.isfinite(t).all()) and bool((t == t.round()).all())
        raise ValueError(f"{name} must be integer class labels, got dtype {t.dtype}"
                         + (" (whole numbers: convert them with .long())" if whole
                            else " with non-integer values"))
    t = t.long()
    if t.numel() and int(t.min()) < 0:
        raise ValueError(f"{name} must hold class labels >= 0, got {int(t.min())}")
    if below is not None and t.numel() and int(t.max()) >= below:
        bound = f"{cap}={below}" if cap else str(below)
        raise ValueError(f"{name} must hold class labels < {bound}, got {int(t.max())}: labels "
                         f"are class indices{f' (raise {cap} for more classes)' if cap else ''}")
    return t


def check_labelled(dataset: Any, name: str) -> torch.Tensor:
    """The labels of a dataset with ``.targets``: a 1-d int64 tensor of integer values >= 0."""
    if not hasattr(dataset, "targets"):
        raise TypeError(f"{name} must be a dataset with .targets, got {type(dataset).__name__}")
    return check_labels(dataset.targets, f"{name}.targets")


def check_features(x: Any, name: str = "x", *, dim: int | None = None,
                   dim_name: str | None = None) -> torch.Tensor:
    """``x`` as ``[n, dim]`` finite floating-point features (any ``dim`` when None).

    ``dim_name``: the argument that set ``dim`` (e.g. ``"in_features"``), for the message.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 2 or (dim is not None and x.shape[1] != dim):
        want = "[n, D]" if dim is None else f"[n, {dim}]" + (
            f" ({dim_name}={dim})" if dim_name else "")
        raise ValueError(f"{name} must have shape {want}, got {tuple(x.shape)}")
    if not x.dtype.is_floating_point:
        raise ValueError(f"{name} must be a floating-point tensor, got {x.dtype}")
    # one cheap reduction unless the sum is not finite (finite but huge values overflow it)
    if x.numel() and not bool(torch.isfinite(x.sum())) and not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} (features) contains NaN or inf values")
    return x
