"""Closed-form analytic class-incremental learning: the ACIL / G-ACIL network.

Papers: Zhuang et al., "ACIL: Analytic Class-Incremental Learning with Absolute
Memorization and Privacy Protection" (NeurIPS 2022), and Zhuang et al.,
"G-ACIL: Analytic Learning for Exemplar-Free Generalized Class Incremental
Learning" (2024).

A frozen feature extractor f, a buffer layer ``B(x) = ReLU(x W_B)`` with a fixed
random ``W_B`` (:class:`BufferLayer`), and a ridge classifier on the buffer
features (:class:`RecursiveLeastSquares`) that equals, after any data seen so
far, the joint ridge solution over all of it (ACIL eq. 6), so nothing is
forgotten and no exemplar is kept. The math is in :mod:`neve.models.ridge`; two
ways to reach the solution:

* ``method="accumulate"`` (default): keep ``A = sum X^T X`` and ``C = sum X^T Y``
  and solve when predictions are needed, with a cached Cholesky factorisation.
  It costs the lower triangle of one ``X^T X`` per batch, and it is the only form
  whose statistics can be summed across workers;
* ``method="woodbury"``: keep ``R = (X^T X + gamma I)^-1`` and ``W`` and update
  both per mini-batch with the Woodbury identity (ACIL eq. 10-11, G-ACIL eq.
  9-10), which rewrites all of ``R`` per batch.

Both give the same ``W`` up to rounding (``tests/test_analytic.py``);
``bench/analytic.py`` times them.

Distributed: when ``torch.distributed`` is initialised,
:meth:`RecursiveLeastSquares.partial_fit` all-reduces (sums) each batch's
``X^T X`` and ``X^T Y`` and agrees on the class count (all-reduce max of the
labels), so N workers fed disjoint shards end with the ``W`` of one process fed
everything. Every worker must call ``partial_fit`` the same number of times
(an empty batch is allowed).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .ridge import (
    accumulate_statistics,
    check_features,
    check_labels,
    solve_ridge,
    woodbury_update,
)

_METHODS = ("accumulate", "woodbury")


def distributed_active() -> bool:
    """True when a ``torch.distributed`` process group with more than one process is up."""
    return (
        torch.distributed.is_available()
        and torch.distributed.is_initialized()
        and torch.distributed.get_world_size() > 1
    )


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

    def __init__(
        self,
        in_features: int,
        buffer_size: int,
        *,
        seed: int | None = None,
        projection_dtype: torch.dtype = torch.float64,
    ) -> None:
        super().__init__()
        if int(in_features) < 1:
            raise ValueError(f"in_features must be >= 1, got {in_features}")
        if int(buffer_size) < 1:
            raise ValueError(f"buffer_size must be >= 1, got {buffer_size}")
        if projection_dtype not in (torch.float32, torch.float64):
            raise ValueError(
                f"projection_dtype must be torch.float32 or torch.float64, got {projection_dtype!r}"
            )
        self.in_features = int(in_features)
        self.buffer_size = int(buffer_size)
        self.projection_dtype = projection_dtype
        gen = None if seed is None else torch.Generator().manual_seed(int(seed))
        weight = torch.randn(
            self.in_features, self.buffer_size, generator=gen, dtype=torch.float64
        ) / math.sqrt(self.in_features)
        self.register_buffer("weight", weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[n, in_features]`` -> ``[n, buffer_size]`` float64."""
        error = check_features(x, self.in_features, "x (backbone features)")
        if error is not None:
            raise ValueError(error)
        dtype = self.projection_dtype
        return torch.relu(x.to(dtype) @ self.weight.to(dtype)).to(torch.float64)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, buffer_size={self.buffer_size}, "
            f"projection_dtype={self.projection_dtype}"
        )


class RecursiveLeastSquares(nn.Module):
    """Ridge classifier on features, learned one batch at a time, equal to the joint solution.

    After ``partial_fit`` on batches ``(X_1, y_1), ..., (X_t, y_t)``, :attr:`weight`
    is ``(X^T X + gamma I)^-1 X^T Y`` over their concatenation (ACIL eq. 6). The
    class count grows with the labels: a label ``k`` makes the classifier have
    ``k + 1`` outputs, new columns starting at zero (G-ACIL sec. 4).

    Args:
        in_features: feature size ``b``.
        gamma: ridge strength, > 0.
        method: ``"accumulate"`` (default; sums ``A = X^T X``, ``C = X^T Y`` and
            solves with a cached Cholesky factor when :attr:`weight` is read) or
            ``"woodbury"`` (recursive update of ``R`` and ``W`` per batch).

    All state is in float64 buffers (``state_dict`` / ``load_state_dict``, also
    across a change of class count), on the module's device.
    """

    def __init__(self, in_features: int, gamma: float = 1.0, method: str = "accumulate") -> None:
        super().__init__()
        if int(in_features) < 1:
            raise ValueError(f"in_features must be >= 1, got {in_features}")
        if not isinstance(gamma, (int, float)) or not math.isfinite(gamma) or gamma <= 0:
            raise ValueError(f"gamma must be a finite number > 0, got {gamma!r}")
        if method not in _METHODS:
            raise ValueError(f"method must be one of {_METHODS}, got {method!r}")
        self.in_features = int(in_features)
        self.gamma = float(gamma)
        self.method = method
        b = self.in_features
        self.register_buffer("num_seen", torch.zeros((), dtype=torch.long))
        if method == "accumulate":
            self.register_buffer("gram", torch.zeros(b, b, dtype=torch.float64))
            self.register_buffer("cross", torch.zeros(b, 0, dtype=torch.float64))
        else:
            self.register_buffer("inverse", torch.eye(b, dtype=torch.float64) / self.gamma)
            self.register_buffer("recursive_weight", torch.zeros(b, 0, dtype=torch.float64))
        self._solved: tuple[int, torch.Tensor] | None = None  # (version, W), not state

    # -- state -------------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        """Number of outputs: 1 + the largest label seen (0 before any)."""
        buf = self.cross if self.method == "accumulate" else self.recursive_weight
        return buf.shape[1]

    def get_extra_state(self) -> dict:
        return {"gamma": self.gamma, "method": self.method, "in_features": self.in_features}

    def set_extra_state(self, state: dict) -> None:
        if state["method"] != self.method or state["in_features"] != self.in_features:
            raise ValueError(
                f"state_dict is for method={state['method']!r}, in_features="
                f"{state['in_features']}; this module has method={self.method!r}, "
                f"in_features={self.in_features}"
            )
        self.gamma = float(state["gamma"])

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # the class count may differ from this module's: take the stored shapes
        for name, buf in self._buffers.items():
            key = prefix + name
            if key in state_dict and state_dict[key].shape != buf.shape:
                self._buffers[name] = torch.empty_like(state_dict[key], device=buf.device)
        self._solved = None
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _apply(self, fn, *args, **kwargs):
        self._solved = None
        return super()._apply(fn, *args, **kwargs)

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_solved"] = None  # a cache, recomputed on demand
        return state

    # -- learning ----------------------------------------------------------------------
    def _validate(self, x: torch.Tensor, y: torch.Tensor) -> str | None:
        error = check_features(x, self.in_features)
        if error is None:
            error = check_labels(y, x.shape[0])
        return error

    def _grow(self, num_classes: int) -> None:
        name = "cross" if self.method == "accumulate" else "recursive_weight"
        buf = self._buffers[name]
        if num_classes > buf.shape[1]:
            pad = buf.new_zeros(buf.shape[0], num_classes - buf.shape[1])
            self._buffers[name] = torch.cat([buf, pad], dim=1)

    def _agree_on_batch(self, error: str | None, y: torch.Tensor) -> int:
        """Largest label of the batch (-1 if empty), agreed across workers; raises if invalid.

        Under ``torch.distributed`` every worker learns the largest label of all
        batches and raises when any worker's batch is invalid, before any state
        changes (one all-reduce max of ``[max label, invalid]``).
        """
        max_label = int(y.max()) if error is None and y.numel() else -1
        if not distributed_active():
            if error is not None:
                raise ValueError(error)
            return max_label
        if self.method != "accumulate":
            raise ValueError(
                "method='woodbury' cannot be used under torch.distributed; "
                "use method='accumulate' (its statistics are summed across workers)"
            )
        flags = torch.tensor([max_label, int(error is not None)], dtype=torch.long)
        backend = torch.distributed.get_backend()
        flags = flags.to(self.num_seen.device if backend == "nccl" else "cpu")
        torch.distributed.all_reduce(flags, op=torch.distributed.ReduceOp.MAX)
        if error is not None:
            raise ValueError(error)
        if bool(flags[1]):
            raise ValueError("another worker's partial_fit batch was invalid (see its error)")
        return int(flags[0])

    def _accumulate_everywhere(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Add the sum over all workers' batches of ``X^T X``, ``X^T Y`` and the count."""
        gram = torch.zeros_like(self.gram)
        cross = torch.zeros_like(self.cross)
        accumulate_statistics(gram, cross, x, y)
        count = torch.tensor(float(x.shape[0]), dtype=torch.float64, device=x.device)
        for t in (gram, cross, count):
            torch.distributed.all_reduce(t)
        self.gram += gram
        self.cross += cross
        self.num_seen += int(count.round())

    @torch.no_grad()
    def partial_fit(self, x: torch.Tensor, y: torch.Tensor) -> RecursiveLeastSquares:
        """Learn one batch: features ``x`` ``[n, in_features]``, integer labels ``y`` ``[n]``.

        Raises:
            ValueError: ``x`` of the wrong shape, not floating point, or with NaN/inf;
                ``y`` not integer, of the wrong length or with a label < 0. The
                state is unchanged. Under ``torch.distributed`` every worker raises
                when any worker's batch is invalid.
        """
        max_label = self._agree_on_batch(self._validate(x, y), y)
        dev = self.num_seen.device
        x = x.to(device=dev, dtype=torch.float64)
        y = y.to(device=dev, dtype=torch.long)
        self._grow(max_label + 1)
        if self.method == "accumulate" and distributed_active():
            self._accumulate_everywhere(x, y)
        elif self.method == "accumulate":
            accumulate_statistics(self.gram, self.cross, x, y)
            self.num_seen += x.shape[0]
        else:
            if x.shape[0]:
                y_hot = F.one_hot(y, self.num_classes).to(torch.float64)
                self.inverse, self.recursive_weight = woodbury_update(
                    self.inverse, self.recursive_weight, x, y_hot
                )
            self.num_seen += x.shape[0]
        self._solved = None
        return self

    # -- prediction --------------------------------------------------------------------
    @property
    def weight(self) -> torch.Tensor:
        """``W`` ``[in_features, num_classes]`` float64: the joint ridge solution so far."""
        if self.method == "woodbury":
            return self.recursive_weight
        if self._solved is None:
            self._solved = solve_ridge(self.gram, self.cross, self.gamma)[0]
        return self._solved

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``x W`` ``[n, num_classes]`` (float64) over the classes seen so far."""
        error = check_features(x, self.in_features)
        if error is not None:
            raise ValueError(error)
        return x.to(device=self.num_seen.device, dtype=torch.float64) @ self.weight

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, gamma={self.gamma}, method={self.method!r}, "
            f"num_classes={self.num_classes}"
        )


class AnalyticClassifier(nn.Module):
    """``head(buffer(backbone(x)))``: ACIL's network, frozen backbone to closed-form head.

    Args:
        backbone: maps a batch of the dataset's inputs to ``[n, feature_dim]``
            (``nn.Identity()`` for precomputed features).
        feature_dim: the backbone's output size.
        buffer_size, gamma, seed, method, projection_dtype: of :class:`BufferLayer`
            and :class:`RecursiveLeastSquares`.

    ``forward`` returns float32 logits ``[n, max(1, num_classes)]`` (a single zero
    column before any class is learned, so Avalanche's metrics still work).
    """

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
    ) -> None:
        super().__init__()
        if not isinstance(backbone, nn.Module):
            raise ValueError(f"backbone must be an nn.Module, got {type(backbone).__name__}")
        self.backbone = backbone
        self.feature_dim = int(feature_dim)
        self.buffer = BufferLayer(
            feature_dim, buffer_size, seed=seed, projection_dtype=projection_dtype
        )
        self.head = RecursiveLeastSquares(buffer_size, gamma=gamma, method=method)

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
