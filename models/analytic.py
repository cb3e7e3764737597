"""Closed-form analytic class-incremental learning: ACIL / G-ACIL heads.

Papers: Zhuang et al., "ACIL: Analytic Class-Incremental Learning with Absolute
Memorization and Privacy Protection" (NeurIPS 2022), and Zhuang et al.,
"G-ACIL: Analytic Learning for Exemplar-Free Generalized Class Incremental
Learning" (2024).

A frozen feature extractor f, a buffer layer ``B(x) = ReLU(x W_B)`` with a fixed
random ``W_B``, and a ridge-regression classifier on the buffer features. After
any data seen so far the classifier is the *joint* ridge solution over all of it

    W = (X^T X + gamma I)^-1 X^T Y                          (ACIL eq. 6 / G-ACIL eq. 5)

with ``X`` the buffer features and ``Y`` the one-hot targets of every sample
seen, so nothing is forgotten and no exemplar is kept. Two ways to get there:

* recursive (ACIL eq. 10-11, G-ACIL eq. 9-10): keep ``R = (X^T X + gamma I)^-1``
  and ``W``, update both per mini-batch with the Woodbury identity
  (:func:`woodbury_update`);
* accumulate-and-solve: keep the sufficient statistics ``A = sum X^T X`` and
  ``C = sum X^T Y`` (:func:`accumulate_statistics`) and solve when predictions are
  needed (:func:`solve_ridge`), with a cached Cholesky factorisation.

Both give the same ``W`` up to rounding (``tests/test_analytic.py``). Measured on
2 CPU cores (``bench/analytic.py``) accumulate-and-solve is several times faster:
it costs the lower triangle of one ``X^T X`` per batch, while Woodbury multiplies
``R`` (``b x b``) by ``X^T`` twice and rewrites all of ``R`` per batch. It is the
default, and the only form whose statistics can be summed across workers
(distributed training).

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
from torch import nn

_METHODS = ("accumulate", "woodbury")


# ----------------------------------------------------------------------------- pure math
def one_hot(labels: torch.Tensor, num_classes: int, dtype=torch.float64) -> torch.Tensor:
    """One-hot targets ``Y`` ``[n, num_classes]`` of integer ``labels`` ``[n]``."""
    y = torch.zeros(labels.shape[0], num_classes, dtype=dtype, device=labels.device)
    y[torch.arange(labels.shape[0], device=labels.device), labels] = 1.0
    return y


def add_lower_gram(gram: torch.Tensor, x: torch.Tensor, blocks: int | None = None) -> None:
    """``gram += X^T X`` on the lower triangle (and the diagonal blocks), in place.

    The columns of ``X`` ``[n, b]`` are cut into ``blocks`` ranges; row block ``i``
    of ``gram`` gets ``X_i^T X[:, :end_i]``, i.e. only the blocks on or below the
    diagonal: ``(blocks + 1) / (2 blocks)`` of a full product's flops (0.625 for 4
    blocks; BLAS ``syrk`` would be 0.5). It runs on torch's own BLAS and threads:
    calling a second BLAS (e.g. scipy's OpenBLAS ``dsyrk``) between torch's products
    made both spin against each other, slower in a fit loop than these blocks.
    Entries above the diagonal blocks are left as they are.

    Args:
        gram: ``[b, b]``, updated in place.
        x: ``[n, b]``, same dtype and device.
        blocks: number of column blocks (default: ``b // 256`` clamped to 1..8).
    """
    b = gram.shape[0]
    blocks = max(1, min(8, b // 256)) if blocks is None else max(1, min(int(blocks), b))
    edges = [round(i * b / blocks) for i in range(blocks + 1)]
    for start, stop in zip(edges[:-1], edges[1:], strict=True):
        gram[start:stop, :stop].addmm_(x[:, start:stop].T, x[:, :stop])


def accumulate_statistics(
    gram: torch.Tensor, cross: torch.Tensor, x: torch.Tensor, labels: torch.Tensor
) -> None:
    """Add one batch to the sufficient statistics, in place.

    ``gram += X^T X`` (``[b, b]``) and ``cross += X^T Y`` (``[b, C]``) with ``Y`` the
    one-hot targets of ``labels``: the two sums whose ridge solution is the joint
    ``W`` (ACIL eq. 6). Only the *lower triangle* of ``gram`` is meaningful
    (:func:`add_lower_gram`). On CPU ``X^T Y`` is a per-class row sum (``index_add``,
    one pass over ``X``, 10x faster than a skinny product); elsewhere it is ``addmm``
    (deterministic on CUDA, unlike ``index_add``).

    Args:
        gram: ``A``, ``[b, b]`` float64.
        cross: ``C``, ``[b, C]`` float64.
        x: buffer features ``X`` ``[n, b]`` float64.
        labels: ``[n]`` integer labels in ``[0, C)``.
    """
    if x.shape[0] == 0:
        return
    add_lower_gram(gram, x)
    if cross.device.type == "cpu":
        sums = torch.zeros(cross.shape[1], cross.shape[0], dtype=cross.dtype)
        cross += sums.index_add_(0, labels, x.to(cross.dtype)).T
    else:
        cross.addmm_(x.T, one_hot(labels, cross.shape[1], dtype=cross.dtype))


def symmetric_from_lower(gram: torch.Tensor) -> torch.Tensor:
    """The symmetric matrix with ``gram``'s lower triangle (see :func:`accumulate_statistics`)."""
    lower = torch.tril(gram)
    return lower + torch.tril(gram, -1).T


def solve_ridge(
    gram: torch.Tensor, cross: torch.Tensor, gamma: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Ridge weights ``W = (A + gamma I)^-1 C`` by Cholesky (ACIL eq. 6).

    Args:
        gram: ``A = sum X^T X``, ``[b, b]``.
        cross: ``C = sum X^T Y``, ``[b, C]``.
        gamma: ridge strength > 0 (makes ``A + gamma I`` positive definite).

    Returns:
        ``(W, L)``: weights ``[b, C]`` and the lower Cholesky factor ``[b, b]`` of
        ``A + gamma I`` (reusable by :func:`torch.cholesky_solve`). Only the lower
        triangle of ``gram`` is read.
    """
    reg = torch.tril(gram)
    reg.diagonal().add_(gamma)
    chol = torch.linalg.cholesky(reg)
    return torch.cholesky_solve(cross, chol), chol


def woodbury_update(
    inverse: torch.Tensor, weight: torch.Tensor, x: torch.Tensor, y: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """One recursive least-squares step (ACIL eq. 10-11; G-ACIL eq. 9-10).

    With ``R = (sum_{old} X^T X + gamma I)^-1`` and the old ``W``:

        K = (I + X R X^T)^-1
        R' = R - R X^T K X R
        W' = W + R' X^T (Y - X W)

    Args:
        inverse: ``R`` ``[b, b]``.
        weight: ``W`` ``[b, C]`` (already padded to the batch's class count).
        x: ``[n, b]`` buffer features.
        y: ``[n, C]`` one-hot targets.

    Returns:
        ``(R', W')``.
    """
    rxt = inverse @ x.T  # [b, n]
    inner = x @ rxt
    inner.diagonal().add_(1.0)
    k_x_r = torch.linalg.solve(inner, rxt.T)  # K X R, [n, b]
    new_inverse = inverse - rxt @ k_x_r
    new_weight = weight + new_inverse @ (x.T @ (y - x @ weight))
    return new_inverse, new_weight


def joint_ridge_solution(x: torch.Tensor, labels: torch.Tensor, gamma: float) -> torch.Tensor:
    """``(X^T X + gamma I)^-1 X^T Y`` on all data at once (the target of every form)."""
    y = one_hot(labels, int(labels.max()) + 1, dtype=x.dtype)
    a = x.T @ x
    a.diagonal().add_(gamma)
    return torch.linalg.solve(a, x.T @ y)


# ----------------------------------------------------------------------------- validation
def _check_features(x: torch.Tensor, in_features: int, name: str = "x") -> str | None:
    if not isinstance(x, torch.Tensor):
        return f"{name} must be a torch.Tensor, got {type(x).__name__}"
    if x.dim() != 2 or x.shape[1] != in_features:
        return (
            f"{name} must have shape [n, {in_features}] (in_features={in_features}), "
            f"got {tuple(x.shape)}"
        )
    if not x.dtype.is_floating_point:
        return f"{name} must be a floating-point tensor, got {x.dtype}"
    # a NaN or inf anywhere makes the sum non-finite: one cheap reduction suffices
    # unless the sum is not finite, when finite but huge values may have overflowed it
    if x.numel() and not bool(torch.isfinite(x.sum())) and not bool(torch.isfinite(x).all()):
        return f"{name} (features) contains NaN or inf values"
    return None


def _check_labels(y: torch.Tensor, n: int) -> str | None:
    if not isinstance(y, torch.Tensor):
        return f"y must be a torch.Tensor of integer labels, got {type(y).__name__}"
    if y.dim() != 1 or y.shape[0] != n:
        return f"y (labels) must have shape [{n}] to match x, got {tuple(y.shape)}"
    if y.dtype.is_floating_point or y.dtype.is_complex or y.dtype == torch.bool:
        return f"y (labels) must be an integer tensor, got {y.dtype}"
    if y.numel() and int(y.min()) < 0:
        return f"y (labels) must be >= 0, got {int(y.min())}"
    return None


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
    result: about 2.4x faster on CPU, and the product costs ``n d b`` flops, more
    than the statistics' ``n b^2 / 2`` when ``b < 2 d``. The buffer features then
    differ from the float64 ones by about 1e-6 relative; the classifier is still
    the exact ridge solution *for the features it was given*, so the incremental
    and joint solutions stay equal.

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
        error = _check_features(x, self.in_features, "x (backbone features)")
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
        error = _check_features(x, self.in_features)
        if error is None:
            error = _check_labels(y, x.shape[0])
        return error

    def _grow(self, num_classes: int) -> None:
        name = "cross" if self.method == "accumulate" else "recursive_weight"
        buf = self._buffers[name]
        if num_classes > buf.shape[1]:
            pad = buf.new_zeros(buf.shape[0], num_classes - buf.shape[1])
            self._buffers[name] = torch.cat([buf, pad], dim=1)

    @torch.no_grad()
    def partial_fit(self, x: torch.Tensor, y: torch.Tensor) -> RecursiveLeastSquares:
        """Learn one batch: features ``x`` ``[n, in_features]``, integer labels ``y`` ``[n]``.

        Raises:
            ValueError: ``x`` of the wrong shape, not floating point, or with NaN/inf;
                ``y`` not integer, of the wrong length or with a label < 0. The
                state is unchanged. Under ``torch.distributed`` every worker raises
                when any worker's batch is invalid.
        """
        error = self._validate(x, y)
        distributed = distributed_active()
        if distributed:
            if self.method != "accumulate":
                raise ValueError(
                    "method='woodbury' cannot be used under torch.distributed; "
                    "use method='accumulate' (its statistics are summed across workers)"
                )
            # agree on validity and class count before touching any state
            dev = self.num_seen.device
            max_label = int(y.max()) if error is None and y.numel() else -1
            flags = torch.tensor([max_label, int(error is not None)], dtype=torch.long)
            backend = torch.distributed.get_backend()
            flags = flags.to(dev if backend == "nccl" else "cpu")
            torch.distributed.all_reduce(flags, op=torch.distributed.ReduceOp.MAX)
            max_label, any_error = int(flags[0]), bool(flags[1])
            if error is not None:
                raise ValueError(error)
            if any_error:
                raise ValueError("another worker's partial_fit batch was invalid (see its error)")
        else:
            if error is not None:
                raise ValueError(error)
            max_label = int(y.max()) if y.numel() else -1

        dev = self.num_seen.device
        x = x.to(device=dev, dtype=torch.float64)
        y = y.to(device=dev, dtype=torch.long)
        self._grow(max_label + 1)
        if self.method == "accumulate":
            if distributed:
                gram = torch.zeros_like(self.gram)
                cross = torch.zeros_like(self.cross)
                accumulate_statistics(gram, cross, x, y)
                count = torch.tensor(float(x.shape[0]), dtype=torch.float64, device=dev)
                for t in (gram, cross, count):
                    torch.distributed.all_reduce(t)
                self.gram += gram
                self.cross += cross
                self.num_seen += int(count.round())
            else:
                accumulate_statistics(self.gram, self.cross, x, y)
                self.num_seen += x.shape[0]
        else:
            if x.shape[0]:
                self.inverse, self.recursive_weight = woodbury_update(
                    self.inverse, self.recursive_weight, x, one_hot(y, self.num_classes)
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
        error = _check_features(x, self.in_features)
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
