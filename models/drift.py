"""Stale class statistics under a moving backbone: drift compensation, mean shrinkage, drift size.

* :func:`sdc_shifts`: semantic drift compensation (Yu, Twardowski, Liu, Herranz,
  Wang, Cheng, Jui, van de Weijer, "Semantic Drift Compensation for Class-Incremental
  Learning", CVPR 2020, Eq. 7-8): the displacement of old class means is
  estimated from the displacement of the current data's features between the
  backbone before and after an experience.
* :func:`drift_jacobian`: beyond SDC, a ridge least-squares linear fit of the
  displacement field, whose linear part moves the stored covariances.
* :func:`shrink_factors`: the SLCA authors' scaling of older classes' means
  before sampling (in their code, not in the paper).
* :func:`mean_drift`: how far stored means are from the means of the same
  data under another backbone (relative L2 distance and cosine).
* :func:`compensate_drift`: the first two applied to stored class Gaussians.

Pure tensors, no Avalanche.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .core.checks import Real, Rule, validated
from .core.distributed import LOCAL, Reduction
from .gaussians import ClassGaussianStats


def _rows_rule(*, need_a_row: bool) -> Rule:
    """``before`` and ``after`` are the same ``[N, D]``; with ``need_a_row``, ``N >= 1``
    unless ``reduction`` is active (another process may hold the rows)."""
    want = "[N >= 1, D]" if need_a_row else "[N, D]"

    def holds(before: torch.Tensor, after: torch.Tensor, reduction: Reduction) -> bool:
        return before.shape == after.shape and before.dim() == 2 and (
            not need_a_row or before.shape[0] >= 1 or reduction.active)

    def message(before: torch.Tensor, after: torch.Tensor, reduction: Reduction) -> str:
        return (f"before and after must be the same {want}, got {tuple(before.shape)} and "
                f"{tuple(after.shape)}")
    return Rule(holds, message)


@validated(_rows_rule(need_a_row=True),
           Rule(lambda before, means: means.dim() == 2 and means.shape[1] == before.shape[1],
                lambda before, means: f"means must be [C, {before.shape[1]}], got "
                f"{tuple(means.shape)}"),
           sigma=Real(gt=0.0))
def sdc_shifts(
    before: torch.Tensor, after: torch.Tensor, means: torch.Tensor, sigma: float = 0.3,
    normalise: bool = True, reduction: Reduction = LOCAL,
) -> torch.Tensor:
    """Estimated displacement ``[C, D]`` of class means ``[C, D]`` (SDC, Eq. 7-8).

    With ``v_i = after_i - before_i`` the displacement of sample i (``[N, D]``
    features of the same inputs under the old and the new backbone),
    ``Delta_c = sum_i w_ic v_i / sum_i w_ic`` and
    ``w_ic = exp(-||before_i - mu_c||^2 / (2 sigma^2))``. SDC computes the
    distances on L2-normalised embeddings with ``sigma = 0.3``; ``normalise``
    (default) does the same here (distances between L2-normalised ``before_i``
    and ``mu_c``), so ``sigma`` is scale-free, while the displacements ``v_i``
    stay in the features' own space. Computed in float64 with a log-sum-exp
    normalisation, so a far class gets the nearest samples' mean displacement
    instead of a division by zero.

    With a ``reduction`` over several processes, each passes its rows (possibly
    none) and the same ``means``; the partial sums (:func:`sdc_partial_sums`) are
    combined with one reduced max and one reduced sum, and every process gets the
    same shifts.
    """
    top, total, weighted = sdc_partial_sums(before, after, means, sigma, normalise)
    (best,) = reduction.max([top.clone()])
    scale = torch.exp(top - best)  # 0 for a part without rows, 1 in one process
    total, weighted = total * scale, weighted * scale[:, None]
    reduction.sum([total, weighted])
    return weighted / total[:, None]


def sdc_partial_sums(
    before: torch.Tensor, after: torch.Tensor, means: torch.Tensor, sigma: float = 0.3,
    normalise: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The sums of :func:`sdc_shifts` over some samples, scaled to be summable over parts.

    With ``l_ic = -||before_i - mu_c||^2 / (2 sigma^2)`` (Eq. 8's log-weight) and
    ``m_c = max_i l_ic`` (``-inf`` with no sample), returns ``(m [C],
    sum_i exp(l_ic - m_c) [C], sum_i exp(l_ic - m_c) v_i [C, D])``, float64. The
    sums of disjoint parts combine after rescaling each part by ``exp(m_c^part -
    max m_c)``; ``Delta_c`` is the ratio of the sums. ``before`` / ``after`` may
    have no rows.
    """
    b, a, m = before.double(), after.double(), means.double()
    if normalise:
        distance = torch.cdist(F.normalize(m, dim=1), F.normalize(b, dim=1))
    else:
        distance = torch.cdist(m, b)
    logits = -distance.pow(2) / (2 * sigma**2)  # [C, N]
    if logits.shape[1] == 0:
        top = torch.full((m.shape[0],), -math.inf, dtype=torch.float64, device=m.device)
        return top, torch.zeros_like(top), torch.zeros_like(m)
    top = logits.max(dim=1).values
    weights = torch.exp(logits - top[:, None])
    return top, weights.sum(1), weights @ (a - b)


@validated(_rows_rule(need_a_row=False), ridge=Real(gt=0.0))
def drift_jacobian(before: torch.Tensor, after: torch.Tensor, ridge: float = 1.0,
                   reduction: Reduction = LOCAL) -> torch.Tensor:
    """``A = I + B`` ``[D, D]``: the linear part of a least-squares fit of the drift (beyond SDC).

    SDC (Yu et al., CVPR 2020) moves a class's mean by the local mean
    displacement, a translation, so covariances stay. To move covariances too,
    the displacement field is fitted linearly on the current data, ``v ~ v_bar +
    (x - x_bar) B`` (row vectors, ``x`` = ``before``, ``v = after - before``),
    by ridge regression: ``B = (X_c^T X_c + lambda I)^{-1} X_c^T V_c`` with the
    centred ``X_c``, ``V_c`` and ``lambda = ridge * tr(X_c^T X_c) / D``, so
    directions the data does not span keep ``B = 0`` (no change). Under the
    fitted map ``x -> x A`` a class Gaussian's covariance becomes ``A^T Sigma
    A`` (:meth:`~neve.models.gaussians.ClassGaussianStats.map_covariances`).
    float64. With a ``reduction`` over several processes each passes its rows:
    the sums, then the centred products ``X_c^T X_c``, ``X_c^T V_c``, are summed,
    and every process gets the same ``A``.
    """
    x, v = before.double(), after.double() - before.double()
    count = torch.tensor([float(x.shape[0])], dtype=torch.float64, device=x.device)
    sums = torch.stack([x.sum(0), v.sum(0)])
    reduction.sum([count, sums])
    if float(count) < 2:
        raise ValueError(f"fitting the drift needs >= 2 samples, got {int(count)}")
    xc, vc = x - sums[0] / count, v - sums[1] / count
    gram, cross = reduction.sum([xc.T @ xc, xc.T @ vc])
    d = gram.shape[0]
    lam = ridge * float(torch.trace(gram)) / d
    eye = torch.eye(d, dtype=torch.float64, device=gram.device)
    return eye + torch.linalg.solve(gram + max(lam, 1e-12) * eye, cross)


def shrink_factors(groups: list[int], current: int) -> list[float]:
    """The authors' mean scaling ``0.9 + 0.1 (t_c + 1) / (T + 1)`` per class.

    ``groups``: the experience ``t_c`` of each class; ``current``: the current
    experience ``T``. Classes of the current experience get 1; the first's
    ``0.9 + 0.1 / (T + 1)``.
    """
    return [0.9 + 0.1 * (t + 1) / (current + 1) for t in groups]


def mean_drift(stored: torch.Tensor, actual: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per class ``||stored - actual|| / ||actual||`` and cosine(stored, actual), both ``[C]``."""
    s, a = stored.double(), actual.double()
    relative = (s - a).norm(dim=1) / a.norm(dim=1).clamp_min(1e-12)
    return relative, F.cosine_similarity(s, a, dim=1)


def compensate_drift(stats: ClassGaussianStats, before: torch.Tensor, after: torch.Tensor, *,
                     sigma: float, covariance_ridge: float | None = None,
                     reduction: Reduction = LOCAL) -> None:
    """Move the stored classes of ``stats`` by the drift from ``before`` to ``after`` features.

    Means by :func:`sdc_shifts`; with ``covariance_ridge``, covariances too, by the
    linear part of :func:`drift_jacobian` (``Sigma_c -> A^T Sigma_c A``). ``before`` /
    ``after``: ``[N, D]`` features of the same inputs under the old and the new
    backbone (this process's rows under ``reduction``).
    """
    old = stats.classes
    means = torch.stack([stats.means[c] for c in old])
    shifts = sdc_shifts(before, after, means, sigma, reduction=reduction)
    jacobian = None if covariance_ridge is None else drift_jacobian(
        before, after, covariance_ridge, reduction)
    stats.shift_means(dict(zip(old, shifts, strict=True)))
    if jacobian is not None:
        stats.map_covariances(jacobian, old)
