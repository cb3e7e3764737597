"""Per-class count, mean and scatter of feature vectors, on one process or summed over several.

The statistics of SLCA's class Gaussians (Zhang et al., ICCV 2023, Sec. 4.2;
:class:`neve.models.gaussians.ClassGaussianStats`) are, per class ``c``, the
count ``n_c``, the mean ``mu_c`` and the scatter ``S_c = sum_i (f_i - mu_c)(f_i
- mu_c)^T`` (covariance ``S_c / (n_c - 1)``). Two disjoint sets merge exactly
(:func:`merge_moments`, Chan, Golub and LeVeque 1979), and under
``torch.distributed`` the moments of the processes' shards are all-reduced
(:func:`reduced_class_moments`): counts and sums first, so every process knows
``mu_c``, then the scatters about ``mu_c``. A moment is the tuple ``(n, mean [D],
scatter, rows)``: float64, scatter ``[D, D]`` (``[D]``: its diagonal for
``covariance="diagonal"``), ``rows`` the centred features ``[n, D]`` or None.
"""

from __future__ import annotations

import torch

from .distributed import (
    all_gather_rows,
    all_reduce_max,
    all_reduce_sum,
    is_distributed,
    raise_everywhere,
)
from .gaussian_state import check_update_inputs

Moments = tuple[int, torch.Tensor, torch.Tensor, torch.Tensor | None]

__all__ = ["Moments", "class_moments", "local_class_moments", "merge_moments",
           "reduced_class_moments"]


def class_moments(features: torch.Tensor) -> tuple[int, torch.Tensor, torch.Tensor]:
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
    n, mean, scatter = class_moments(rows)
    if covariance == "diagonal":
        return n, mean, torch.diagonal(scatter).clone(), None
    centred = rows.detach().to(torch.float64) - mean
    return n, mean, scatter, centred if covariance == "full" else None


def local_class_moments(features: torch.Tensor, targets: torch.Tensor,
                        covariance: str = "full") -> dict[int, Moments]:
    """The :data:`Moments` of each class in ``targets`` ``[N]``, from ``features`` ``[N, D]``.

    ``rows`` (the centred features) are kept for ``covariance="full"``, where
    :class:`~neve.models.gaussians.ClassGaussianStats` samples a class of few
    samples from them.
    """
    features = features.detach().cpu()
    targets = targets.detach().cpu().long()
    return {c: _moment(features[targets == c], covariance)
            for c in torch.unique(targets).tolist()}


def reduced_class_moments(features: torch.Tensor, targets: torch.Tensor,
                          covariance: str = "full") -> dict[int, Moments]:
    """:func:`local_class_moments` of the union of every process's ``features`` / ``targets``.

    Without a process group (or with one process), :func:`local_class_moments`
    after :func:`~neve.models.gaussian_state.check_update_inputs`. Under
    ``torch.distributed`` every process passes its contiguous shard (shards in
    rank order = the data in order; a shard may be empty) and gets the same
    dict:

    * the largest class id (all-reduce max), then per class the count and the
      sum of features (all-reduce sum of ``[K]`` and ``[K, D]``), so
      ``mu_c = sum_c / n_c``;
    * a class with ``n_c <= D`` under ``covariance="full"``: its rows are
      gathered in rank order (``n_c D`` numbers, fewer than a scatter's ``D^2``)
      and its moments computed from them as on one process (the same numbers);
    * every other class: the scatter about ``mu_c``, ``sum_r (F_r - mu_c)^T
      (F_r - mu_c)`` (its diagonal for ``"diagonal"``), all-reduced.

    Bad input on any process (non-finite features, bad targets) is refused on
    every process before anything is reduced.
    """
    if not is_distributed():
        check_update_inputs(features, targets, 0, None)
        return local_class_moments(features, targets, covariance)
    empty_shard = features.dim() == 2 and features.shape[0] == 0 and targets.shape == (0,)
    error = None
    try:
        if not empty_shard:
            check_update_inputs(features, targets, 0, None)
    except (TypeError, ValueError) as err:
        error = err
    raise_everywhere(error, "another process's features or targets were refused (see its "
                     "error); nothing was stored")
    x = features.detach().cpu().to(torch.float64)
    y = targets.detach().cpu().long()
    (largest,) = all_reduce_max([torch.tensor([int(y.max()) if y.numel() else -1])])
    k, d = int(largest) + 1, x.shape[1]
    counts = torch.bincount(y, minlength=k).to(torch.float64)
    sums = torch.zeros(k, d, dtype=torch.float64).index_add_(0, y, x)
    all_reduce_sum([counts, sums])
    classes = [c for c in range(k) if counts[c] > 0]
    gathered = [c for c in classes if covariance == "full" and counts[c] <= d]
    out: dict[int, Moments] = {}
    if gathered:  # the same list on every process
        picked = torch.isin(y, torch.tensor(gathered, dtype=torch.long))
        rows, rows_y = all_gather_rows(x[picked]), all_gather_rows(y[picked])
        out = {c: _moment(rows[rows_y == c], covariance) for c in gathered}
    reduced = [c for c in classes if c not in out]
    scatters = []
    for c in reduced:
        centred = x[y == c] - sums[c] / counts[c]
        scatters.append((centred * centred).sum(0) if covariance == "diagonal"
                        else centred.T @ centred)
    all_reduce_sum(scatters)
    for c, scatter in zip(reduced, scatters, strict=True):
        out[c] = (int(counts[c]), sums[c] / counts[c], scatter, None)
    return dict(sorted(out.items()))
