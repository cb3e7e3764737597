"""Per-class count, mean and scatter of feature vectors, over one process's data or several's.

The statistics of SLCA's class Gaussians (Zhang et al., ICCV 2023, Sec. 4.2;
:class:`neve.models.gaussians.ClassGaussianStats`) are, per class ``c``, the
count ``n_c``, the mean ``mu_c`` and the scatter ``S_c = sum_i (f_i - mu_c)(f_i
- mu_c)^T`` (covariance ``S_c / (n_c - 1)``). Two disjoint sets merge exactly
(:func:`merge_moments`, Chan, Golub and LeVeque 1979). A moment is the tuple
``(n, mean [D], scatter, rows)``: float64, scatter ``[D, D]`` (``[D]``: its
diagonal for ``covariance="diagonal"``), ``rows`` the centred features
``[n, D]`` or None.
"""

from __future__ import annotations

import torch

from .core.distributed import LOCAL, Reduction
from .gaussian_checks import check_update_inputs

Moments = tuple[int, torch.Tensor, torch.Tensor, torch.Tensor | None]

__all__ = ["Moments", "checked_class_moments", "class_moments", "merge_moments", "moments_of"]


def moments_of(features: torch.Tensor) -> tuple[int, torch.Tensor, torch.Tensor]:
    """Count, mean ``[D]`` and scatter ``[D, D]`` (float64) of one class's features ``[N, D]``.

    ``S = (f - mu)^T (f - mu)``; the unbiased covariance is ``S / (N - 1)`` (SLCA
    Sec. 4.2; the authors' code uses ``torch.cov`` in float64).
    """
    x = features.detach().to(torch.float64)
    mean = x.mean(dim=0)
    centred = x - mean
    return x.shape[0], mean, centred.T @ centred


def merge_moments(
    a: tuple[int, torch.Tensor, torch.Tensor], b: tuple[int, torch.Tensor, torch.Tensor]
) -> tuple[int, torch.Tensor, torch.Tensor]:
    """Count, mean and scatter of the union of two sets (Chan, Golub, LeVeque 1979).

    ``n = n_a + n_b``, ``delta = mu_b - mu_a``, ``mu = mu_a + delta n_b / n``,
    ``S = S_a + S_b + delta delta^T n_a n_b / n``. Scatters are ``[D, D]`` or, for
    diagonal statistics, ``[D]`` (then ``delta^2`` elementwise).
    """
    (n_a, mu_a, s_a), (n_b, mu_b, s_b) = a, b
    n = n_a + n_b
    delta = mu_b - mu_a
    outer = torch.outer(delta, delta) if s_a.dim() == 2 else delta * delta
    return n, mu_a + delta * (n_b / n), s_a + s_b + outer * (n_a * n_b / n)


def _moment(rows: torch.Tensor, covariance: str) -> Moments:
    n, mean, scatter = moments_of(rows)
    if covariance == "diagonal":
        return n, mean, torch.diagonal(scatter).clone(), None
    centred = rows.detach().to(torch.float64) - mean
    return n, mean, scatter, centred if covariance == "full" else None


def class_moments(features: torch.Tensor, targets: torch.Tensor, covariance: str = "full",
                  reduction: Reduction = LOCAL) -> dict[int, Moments]:
    """The :data:`Moments` of each class in ``targets`` ``[N]``, from ``features`` ``[N, D]``.

    With a :class:`~neve.models.core.distributed.Reduction` over several processes,
    each passes its contiguous shard (shards in rank order = the data in order; a
    shard may be empty) and every process gets the moments of the union:

    * the largest class id (reduced max), then per class the count and the sum of
      features (reduced sums of ``[K]`` and ``[K, D]``), so ``mu_c = sum_c / n_c``;
    * a class with ``n_c <= D`` under ``covariance="full"``: its rows (all
      processes', in rank order: ``n_c D`` numbers, fewer than a scatter's ``D^2``)
      give its moments as on one process, and are kept (``rows``), with which
      :class:`~neve.models.gaussians.ClassGaussianStats` samples a class of few
      samples;
    * every other class: the scatter about ``mu_c`` (its diagonal for
      ``"diagonal"``), summed over the processes.

    Bad input on any process (non-finite features, bad targets) is refused on
    every process before anything is reduced.
    """
    error = None
    if not (reduction.active and features.dim() == 2 and features.shape[0] == 0
            and targets.shape == (0,)):
        try:
            check_update_inputs(features, targets, 0, None)
        except (TypeError, ValueError) as err:
            error = err
    reduction.agree(error, "another process's features or targets were refused (see its "
                    "error); nothing was stored")
    return checked_class_moments(features, targets, covariance, reduction)


def checked_class_moments(features: torch.Tensor, targets: torch.Tensor, covariance: str,
                          reduction: Reduction = LOCAL) -> dict[int, Moments]:
    """:func:`class_moments` of inputs already checked (finite ``[N, D]``, labels ``>= 0``)."""
    x = features.detach().cpu().to(torch.float64)
    y = targets.detach().cpu().long()
    (largest,) = reduction.max([torch.tensor([int(y.max()) if y.numel() else -1])])
    k, d = int(largest) + 1, x.shape[1]
    counts = torch.bincount(y, minlength=k).to(torch.float64)
    sums = torch.zeros(k, d, dtype=torch.float64).index_add_(0, y, x)
    reduction.sum([counts, sums])
    classes = [c for c in range(k) if counts[c] > 0]
    kept = [c for c in classes if covariance == "full" and counts[c] <= d]
    out: dict[int, Moments] = {}
    if kept:  # the same list on every process
        picked = torch.isin(y, torch.tensor(kept, dtype=torch.long))
        rows, rows_y = reduction.rows(x[picked]), reduction.rows(y[picked])
        out = {c: _moment(rows[rows_y == c], covariance) for c in kept}
    summed = [c for c in classes if c not in out]
    scatters = []
    for c in summed:
        centred = x[y == c] - sums[c] / counts[c]
        scatters.append((centred * centred).sum(0) if covariance == "diagonal"
                        else centred.T @ centred)
    reduction.sum(scatters)
    for c, scatter in zip(summed, scatters, strict=True):
        out[c] = (int(counts[c]), sums[c] / counts[c], scatter, None)
    return dict(sorted(out.items()))
