"""The ridge classifier of ACIL / G-ACIL, learned one batch at a time.

Zhuang et al., "ACIL" (NeurIPS 2022) and "G-ACIL" (2024). The math is in
:mod:`neve.models.ridge`; :class:`IncrementalRidge` holds the statistics,
refuses bad batches before changing anything, and offers
:meth:`~IncrementalRidge.atomic`, with which a caller learns several batches (an
experience) whole or not at all.

Numerical range:

* ``method="accumulate"`` refuses a batch whose ``X^T X`` would overflow float64
  (``trace(A) + ||X||_F^2`` above ``1e300``; every entry of ``A`` is at most its
  trace), and :meth:`~IncrementalRidge.check_solvable` refuses an ``A + gamma I``
  that is not numerically positive definite (too small a ``gamma`` for
  rank-deficient features). Inside that range the solution is exact to rounding.
* ``method="woodbury"`` keeps ``R = (A + gamma I)^-1``, whose rounding error grows
  with ``trace(A) / gamma`` (the bound on the condition number of ``A + gamma I``);
  a batch that would take ``trace(A) / gamma`` above :data:`WOODBURY_LIMIT` is
  refused with an error that points to ``method="accumulate"``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from .core.checks import Int, OneOf, Real, validated
from .core.data_checks import check_features, check_labels
from .core.distributed import Reduction, default_reduction
from .ridge import accumulate_statistics, solve_ridge, woodbury_update

METHODS = ("accumulate", "woodbury")
#: Largest ``trace(X^T X) / gamma`` the Woodbury form accepts: its relative error
#: in ``W`` grows about as ``1e-16`` times this ratio, and it diverges near ``1e15``.
WOODBURY_LIMIT = 1e12
#: Largest ``trace(X^T X)`` the accumulate form accepts (float64 overflows near 1.8e308).
OVERFLOW_LIMIT = 1e300
#: Largest ``max diag(A + gamma I) / min diag(L)^2`` (``L`` its Cholesky factor), a
#: cheap lower bound of the condition number, at which the solution is accepted.
CONDITION_LIMIT = 1e12
#: Default cap on the number of classes (the head has one column per class).
DEFAULT_MAX_CLASSES = 30_000
_UNIT_ROUNDOFF = 2.0**-53


def keep_float64(fn):
    """Wrap a ``Module._apply`` function so that float64 tensors change device, not dtype."""

    def apply(t: torch.Tensor) -> torch.Tensor:
        out = fn(t)
        if t.dtype == torch.float64 and out.dtype != torch.float64:
            return t.to(out.device)
        return out

    return apply


class IncrementalRidge(nn.Module):
    """Ridge classifier on features, learned one batch at a time, equal to the joint solution.

    After ``partial_fit`` on batches ``(X_1, y_1), ..., (X_t, y_t)``, :attr:`weight`
    is ``(X^T X + gamma I)^-1 X^T Y`` over their concatenation (ACIL eq. 6). The
    class count grows with the labels: a label ``k`` makes the classifier have
    ``k + 1`` outputs, new columns starting at zero (G-ACIL sec. 4), up to
    ``max_classes``.

    Args:
        in_features: feature size ``b``.
        gamma: ridge strength, > 0.
        method: ``"accumulate"`` (default; sums ``A = X^T X``, ``C = X^T Y`` and
            solves with a cached Cholesky factor when :attr:`weight` is read; the
            only form whose statistics sum over processes) or ``"woodbury"``
            (recursive update of ``R`` and ``W`` per batch, ACIL eq. 10-11; limited
            to ``trace(A) / gamma <= WOODBURY_LIMIT``, see the module docstring).
        max_classes: largest number of outputs; a label ``>= max_classes`` is
            refused (a guard against labels that are not class indices).

    All state is in float64 buffers (``state_dict`` / ``load_state_dict``, also
    across a change of class count), on the module's device; ``.to(dtype)``
    moves them but keeps float64.
    """

    checkpointed = ("in_features", "gamma", "method", "max_classes")

    @validated(in_features=Int(1), gamma=Real(gt=0.0), method=OneOf(*METHODS),
               max_classes=Int(1))
    def __init__(self, in_features: int, gamma: float = 1.0, method: str = "accumulate", *,
                 max_classes: int = DEFAULT_MAX_CLASSES) -> None:
        super().__init__()
        self.in_features, self.gamma, self.method = in_features, gamma, method
        self.max_classes = max_classes
        b = in_features
        self.register_buffer("num_seen", torch.zeros((), dtype=torch.long))
        if method == "accumulate":
            self.register_buffer("gram", torch.zeros(b, b, dtype=torch.float64))
            self.register_buffer("cross", torch.zeros(b, 0, dtype=torch.float64))
        else:
            self.register_buffer("inverse", torch.eye(b, dtype=torch.float64) / gamma)
            self.register_buffer("recursive_weight", torch.zeros(b, 0, dtype=torch.float64))
            self.register_buffer("gram_trace", torch.zeros((), dtype=torch.float64))
        self._solved: torch.Tensor | None = None  # cached W, not state

    # -- state -------------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        """Number of outputs: 1 + the largest label seen (0 before any)."""
        buf = self.cross if self.method == "accumulate" else self.recursive_weight
        return buf.shape[1]

    def trace(self) -> float:
        """``trace(A)``, ``A = sum X^T X`` over the data seen."""
        if self.method == "accumulate":
            return float(self.gram.diagonal().sum())
        return float(self.gram_trace)

    def get_extra_state(self) -> dict:
        return {"gamma": self.gamma, "method": self.method, "in_features": self.in_features}

    def set_extra_state(self, state: dict) -> None:
        self.gamma = float(state["gamma"])

    def _check_state(self, state_dict, prefix: str) -> None:
        """Raise a ValueError naming what in ``state_dict`` does not fit this module."""
        extra = state_dict.get(prefix + "_extra_state")
        if isinstance(extra, dict):
            if (extra.get("method"), extra.get("in_features")) != (self.method, self.in_features):
                raise ValueError(
                    f"state_dict is for method={extra.get('method')!r}, in_features="
                    f"{extra.get('in_features')}; this module has method={self.method!r}, "
                    f"in_features={self.in_features}")
            Real(gt=0.0).check(extra.get("gamma"), "gamma (in the state_dict)")
        b, columns = self.in_features, f"[{self.in_features}, C] with C <= max_classes"
        for name in self._buffers:
            value = state_dict.get(prefix + name)
            if value is None:
                continue
            if not isinstance(value, torch.Tensor):
                raise ValueError(f"state_dict[{prefix + name!r}] must be a tensor")
            if name in ("cross", "recursive_weight"):
                want, ok = f"{columns}={self.max_classes}", value.dim() == 2 and (
                    value.shape[0] == b and value.shape[1] <= self.max_classes)
            else:
                want = {"num_seen": (), "gram": (b, b), "inverse": (b, b), "gram_trace": ()}[name]
                ok = tuple(value.shape) == want
            if not ok:
                raise ValueError(f"state_dict[{prefix + name!r}] has shape {tuple(value.shape)}, "
                                 f"expected {want} (in_features={b})")
            if value.is_floating_point() and not bool(torch.isfinite(value).all()):
                raise ValueError(f"state_dict[{prefix + name!r}] contains NaN or inf")

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        self._check_state(state_dict, prefix)  # before anything changes
        for name, buf in self._buffers.items():  # the class count may differ: the file's shapes
            value = state_dict.get(prefix + name)
            if value is not None and value.shape != buf.shape:
                self._buffers[name] = torch.empty_like(value, device=buf.device)
        self._solved = None
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _apply(self, fn, *args, **kwargs):
        self._solved = None
        return super()._apply(keep_float64(fn), *args, **kwargs)

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_solved"] = None  # a cache, recomputed on demand
        return state

    @contextmanager
    def atomic(self, check: bool = True) -> Iterator[IncrementalRidge]:
        """Learn the batches of the ``with`` block whole or not at all.

        The state is copied on entry (one ``[b, b]`` float64 copy); when the block
        raises, or ``check`` and :meth:`check_solvable` raises at its end, the copy
        is put back and the error goes on.
        """
        saved = {name: buf.clone() for name, buf in self._buffers.items()}
        try:
            yield self
            if check:
                self.check_solvable()
        except BaseException:
            self._buffers.update(saved)
            self._solved = None
            raise

    def check_solvable(self) -> None:
        """Raise a ValueError naming ``gamma`` when ``A + gamma I`` cannot be factorised.

        Cheap when ``trace(A) / gamma`` guarantees success (Cholesky completes when
        ``20 b^1.5 u cond(M) < 1``, Higham 2002, Thm. 10.7, with
        ``cond(A + gamma I) <= (trace(A) + gamma) / gamma``); otherwise it solves
        (the factor is cached for :attr:`weight`).
        """
        if self.method != "accumulate" or int(self.num_seen) == 0:
            return
        bound = (self.trace() + self.gamma) / self.gamma
        if 20 * self.in_features**1.5 * _UNIT_ROUNDOFF * bound < 1:
            return
        self.weight  # noqa: B018 - solves, or raises naming gamma

    # -- learning ----------------------------------------------------------------------
    def _batch_error(self, x: torch.Tensor, y: torch.Tensor) -> ValueError | TypeError | None:
        """Why the batch is refused (the same checks on every process), or None."""
        if not isinstance(y, torch.Tensor):
            return TypeError(f"y (labels) must be a torch.Tensor, got {type(y).__name__}")
        try:
            check_features(x, "x", dim=self.in_features, dim_name="in_features")
            check_labels(y, "y (labels)", n=x.shape[0], below=self.max_classes,
                         cap="max_classes")
        except (TypeError, ValueError) as error:
            return error
        total = self.trace() + (float((x.to(torch.float64) ** 2).sum()) if x.numel() else 0.0)
        if self.method == "accumulate" and not total <= OVERFLOW_LIMIT:
            return ValueError(f"x (features) is too large: sum X^T X would overflow float64 "
                              f"(trace {total:.3g} > {OVERFLOW_LIMIT:g}); rescale the features")
        if self.method == "woodbury" and not total / self.gamma <= WOODBURY_LIMIT:
            return ValueError(
                f"method='woodbury' is inexact at this scale: trace(X^T X) / gamma = "
                f"{total / self.gamma:.3g} > {WOODBURY_LIMIT:g}; use method='accumulate' "
                "(exact), rescale the features or raise gamma")
        return None

    @torch.no_grad()
    def partial_fit(self, x: torch.Tensor, y: torch.Tensor,
                    reduction: Reduction | None = None) -> IncrementalRidge:
        """Learn one batch: features ``x`` ``[n, in_features]``, integer labels ``y`` ``[n]``.

        ``reduction`` (default :func:`~neve.models.core.distributed.default_reduction`):
        under several processes, each batch's ``X^T X``, ``X^T Y`` and count are summed
        over the processes, the class count agreed (the largest label), and a batch
        refused on any process is refused on every one; every process must then call
        ``partial_fit`` as often (an empty batch is allowed).

        Raises:
            ValueError, TypeError: ``x`` of the wrong shape, not floating point, with
                NaN/inf, or too large (see the module docstring); ``y`` not integer,
                of the wrong length, with a label < 0 or >= ``max_classes``. The
                state is unchanged.
        """
        reduction = default_reduction() if reduction is None else reduction
        error = self._batch_error(x, y)
        if reduction.active and self.method != "accumulate":
            error = ValueError("method='woodbury' cannot be used under torch.distributed; use "
                               "method='accumulate' (its statistics are summed across workers)")
        largest = torch.tensor([int(y.max()) if error is None and y.numel() else -1])
        reduction.agree(error, "another worker's partial_fit batch was invalid (see its error)")
        dev = self.num_seen.device
        x, y = x.to(device=dev, dtype=torch.float64), y.to(device=dev, dtype=torch.long)
        (largest,) = reduction.max([largest])
        self._grow(int(largest) + 1)
        if self.method == "accumulate":
            gram, cross = (torch.zeros_like(self.gram), torch.zeros_like(self.cross)) \
                if reduction.active else (self.gram, self.cross)
            accumulate_statistics(gram, cross, x, y)
            count = torch.tensor(float(x.shape[0]), dtype=torch.float64, device=dev)
            if reduction.active:
                reduction.sum([gram, cross, count])
                self.gram += gram
                self.cross += cross
            self.num_seen += int(count.round())
        else:
            if x.shape[0]:
                y_hot = F.one_hot(y, self.num_classes).to(torch.float64)
                self.inverse, self.recursive_weight = woodbury_update(
                    self.inverse, self.recursive_weight, x, y_hot)
                self.gram_trace += (x * x).sum()
            self.num_seen += x.shape[0]
        self._solved = None
        return self

    def _grow(self, num_classes: int) -> None:
        name = "cross" if self.method == "accumulate" else "recursive_weight"
        buf = self._buffers[name]
        if num_classes > buf.shape[1]:
            pad = buf.new_zeros(buf.shape[0], num_classes - buf.shape[1])
            self._buffers[name] = torch.cat([buf, pad], dim=1)

    # -- prediction --------------------------------------------------------------------
    @property
    def weight(self) -> torch.Tensor:
        """``W`` ``[in_features, num_classes]`` float64: the joint ridge solution so far.

        Raises:
            ValueError: naming ``gamma`` when ``A + gamma I`` is not numerically
                positive definite or its condition number exceeds
                :data:`CONDITION_LIMIT` (rank-deficient features and a tiny ``gamma``).
        """
        if self.method == "woodbury":
            return self.recursive_weight
        if self._solved is None:
            why = f"gamma={self.gamma}, trace(X^T X)={self.trace():.3g}"
            try:
                solved, chol = solve_ridge(self.gram, self.cross, self.gamma)
            except torch.linalg.LinAlgError as err:
                raise ValueError(
                    f"X^T X + gamma I is not numerically positive definite ({why}): the "
                    "features are rank-deficient at this gamma; raise gamma") from err
            pivots = chol.diagonal()
            condition = float(self.gram.diagonal().max() + self.gamma) / float(pivots.min()) ** 2
            if not condition <= CONDITION_LIMIT:
                raise ValueError(
                    f"X^T X + gamma I is too ill-conditioned (condition >= {condition:.3g} > "
                    f"{CONDITION_LIMIT:g}; {why}): rounding would dominate W; raise gamma")
            self._solved = solved
        return self._solved

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``x W`` ``[n, num_classes]`` (float64) over the classes seen so far."""
        check_features(x, "x", dim=self.in_features, dim_name="in_features")
        return x.to(device=self.num_seen.device, dtype=torch.float64) @ self.weight

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, gamma={self.gamma}, method={self.method!r}, "
                f"num_classes={self.num_classes}")
