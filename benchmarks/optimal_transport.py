"""Optimal-transport primitives between uniform point clouds (float64, CPU or CUDA).

Pure functions behind :mod:`neve.benchmarks.otdd`:

- :func:`squared_distances`: the ground cost ``C_kl = |x_k - y_l|^2``;
- :func:`exact_ot`: ``OT_0(C) = min_{T in U(a, b)} <T, C>`` by network simplex (POT);
- :func:`entropic_ot`: ``OT_eps(C) = min_{T in U(a, b)} <T, C> + eps KL(T | a b^T)``
  by log-domain Sinkhorn iterations with epsilon-scaling (Peyré & Cuturi,
  "Computational Optimal Transport", 2019, Sec. 4.2 and Remark 4.22);
- :func:`sinkhorn_divergence`: the debiased
  ``S_eps(x, y) = OT_eps(x, y) - (OT_eps(x, x) + OT_eps(y, y)) / 2``
  (Genevay, Peyré & Cuturi, AISTATS 2018; Feydy et al., AISTATS 2019, Eq. 5);
- :func:`gaussian_fit` and :func:`bures_wasserstein_squared`, the closed form
  ``W2^2(N(m1, S1), N(m2, S2)) = |m1 - m2|^2 + tr(S1 + S2 - 2 (S1^1/2 S2 S1^1/2)^1/2)``.

``a`` and ``b`` are uniform (``1/n`` and ``1/m``) throughout. ``eps`` is absolute
(in the cost's units), as geomloss's ``blur ** p``.
"""

from __future__ import annotations

import math

import numpy as np
import torch


def squared_distances(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``[n, m]`` matrix ``|x_k - y_l|^2`` of two float64 samples ``[n, D]`` and ``[m, D]``."""
    diff = x[:, None, :] - y[None, :, :]
    return (diff * diff).sum(-1)


def exact_ot(cost: torch.Tensor) -> float:
    """``OT_0 = min_{T in U(a, b)} <T, C>``, uniform marginals, network simplex (``ot.emd2``).

    Args:
        cost: ``[n, m]`` float64 cost matrix.
    """
    import ot

    c = cost.detach().cpu().numpy()
    n, m = c.shape
    return float(ot.emd2(np.full(n, 1.0 / n), np.full(m, 1.0 / m), c, numItermax=10_000_000))


def _sinkhorn_at(
    cost: torch.Tensor, f: torch.Tensor, g: torch.Tensor, eps: float, tol: float, max_iter: int
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Averaged log-domain Sinkhorn updates at one ``eps``, from the potentials ``f, g``.

    ``f <- (f + T_b(g)) / 2`` and ``g <- (g + T_a(f)) / 2`` with the soft c-transform
    ``T_b(g)_k = -eps log sum_l b_l exp((g_l - C_kl) / eps)``: the same fixed point
    as plain alternation, without its stalls on nearly diagonal plans (self
    problems); the symmetric form of Feydy et al., AISTATS 2019, Sec. 3.1. Stops
    when the L1 errors of both marginals of ``a_k b_l exp((f_k + g_l - C_kl) / eps)``
    sum below ``tol``. Returns the potentials and that error.
    """
    n, m = cost.shape
    log_a, log_b = -math.log(n), -math.log(m)
    err = math.inf
    for _ in range(max_iter):
        f_new = -eps * torch.logsumexp(log_b + (g[None, :] - cost) / eps, dim=1)
        g_new = -eps * torch.logsumexp(log_a + (f[:, None] - cost) / eps, dim=0)
        # row k of the current plan sums to a_k exp((f_k - f_new_k) / eps); columns alike
        err = float((torch.exp((f - f_new) / eps) - 1.0).abs().sum()) / n + float(
            (torch.exp((g - g_new) / eps) - 1.0).abs().sum()
        ) / m
        if err < tol:
            break
        f, g = 0.5 * (f + f_new), 0.5 * (g + g_new)
    return f, g, err


def entropic_ot(
    cost: torch.Tensor, eps: float, tol: float = 1e-6, max_iter: int = 100_000
) -> float:
    """Entropic OT ``OT_eps = min_T <T, C> + eps KL(T | a b^T)``, uniform ``a, b``.

    The value is the dual objective ``<a, f> + <b, g>`` at the Sinkhorn fixed
    point (equal to the primal optimum, entropy included, as geomloss returns it).
    Epsilon-scaling: ``eps`` halves from the largest cost down to ``eps``, each
    level warm-starting the next; the last level iterates until the L1 error of
    the marginals is below ``tol``.

    Args:
        cost: ``[n, m]`` float64.
        eps: regularisation, absolute, ``> 0``.

    Raises:
        RuntimeError: not converged within ``max_iter`` iterations at ``eps``.
    """
    n, m = cost.shape
    f = torch.zeros(n, dtype=cost.dtype, device=cost.device)
    g = torch.zeros(m, dtype=cost.dtype, device=cost.device)
    level = max(float(cost.max()), eps)
    while level > eps:
        f, g, _ = _sinkhorn_at(cost, f, g, level, 1e-3, 1000)
        level /= 2.0
    f, g, err = _sinkhorn_at(cost, f, g, eps, tol, max_iter)
    if not err < tol:
        raise RuntimeError(
            f"Sinkhorn did not converge at eps={eps} in {max_iter} iterations "
            f"(marginal error {err:.2e}); use a larger eps"
        )
    return float(f.mean() + g.mean())


def sinkhorn_divergence(cost_xy: torch.Tensor, cost_xx: torch.Tensor, cost_yy: torch.Tensor,
                        eps: float) -> float:
    """Debiased ``S_eps = OT_eps(x, y) - (OT_eps(x, x) + OT_eps(y, y)) / 2`` from its costs."""
    self_terms = entropic_ot(cost_xx, eps) + entropic_ot(cost_yy, eps)
    return entropic_ot(cost_xy, eps) - 0.5 * self_terms


def gaussian_fit(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean ``[D]`` and unbiased covariance ``[D, D]`` (over ``n - 1``) of ``x [n, D]``, n >= 2."""
    mean = x.mean(0)
    centred = x - mean
    return mean, centred.T @ centred / (x.shape[0] - 1)


def psd_sqrt(s: torch.Tensor) -> torch.Tensor:
    """Symmetric square root of a symmetric PSD matrix (eigenvalues clipped at 0)."""
    w, v = torch.linalg.eigh(0.5 * (s + s.T))
    return (v * w.clamp_min(0.0).sqrt()) @ v.T


def bures_wasserstein_squared(
    mean1: torch.Tensor, cov1: torch.Tensor, mean2: torch.Tensor, cov2: torch.Tensor
) -> float:
    """Squared 2-Wasserstein distance between ``N(mean1, cov1)`` and ``N(mean2, cov2)``.

    ``|m1 - m2|^2 + tr(S1) + tr(S2) - 2 tr((S1^1/2 S2 S1^1/2)^1/2)`` (Dowson & Landau
    1982; Gelbrich 1990), clipped at 0. Means ``[D]``, covariances ``[D, D]`` PSD.
    """
    root1 = psd_sqrt(cov1)
    cross = psd_sqrt(root1 @ cov2 @ root1)
    bures = torch.trace(cov1) + torch.trace(cov2) - 2.0 * torch.trace(cross)
    return max(float(((mean1 - mean2) ** 2).sum() + bures), 0.0)
