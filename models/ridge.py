"""Ridge regression by sufficient statistics: the math of the analytic heads (ACIL / G-ACIL).

Zhuang et al., "ACIL" (NeurIPS 2022) and "G-ACIL" (2024). With ``X`` the buffer
features ``[n, b]`` and ``Y`` the one-hot targets ``[n, C]`` of every sample seen,
the classifier is the joint ridge solution

    W = (X^T X + gamma I)^-1 X^T Y                          (ACIL eq. 6 / G-ACIL eq. 5)

reached either by summing ``A = X^T X`` and ``C = X^T Y`` batch by batch
(:func:`accumulate_statistics`) and solving (:func:`solve_ridge`), or by the
recursive Woodbury update of ``R = (X^T X + gamma I)^-1`` and ``W``
(:func:`woodbury_update`, ACIL eq. 10-11). All functions here are pure tensor
code; :class:`neve.models.IncrementalRidge` holds the state.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def add_lower_gram(gram: torch.Tensor, x: torch.Tensor, blocks: int | None = None) -> None:
    """``gram += X^T X`` on the lower triangle (and the diagonal blocks), in place.

    The columns of ``X`` ``[n, b]`` are cut into ``blocks`` ranges; row block ``i``
    of ``gram`` gets ``X_i^T X[:, :end_i]``, i.e. only the blocks on or below the
    diagonal: ``(blocks + 1) / (2 blocks)`` of a full product's flops (BLAS ``syrk``
    would be half). It runs on torch's own BLAS and threads: a second BLAS (e.g.
    scipy's ``dsyrk``) called between torch's products spins against torch's
    thread pool. Entries above the diagonal blocks are left as they are.

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
    one pass over ``X``); elsewhere it is ``addmm`` (deterministic on CUDA, unlike
    ``index_add``).

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
        cross.addmm_(x.T, F.one_hot(labels.long(), cross.shape[1]).to(cross.dtype))


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
    """``(X^T X + gamma I)^-1 X^T Y`` on all data at once (the target of every form).

    Args:
        x: ``[n, b]`` features.
        labels: ``[n]`` integer labels; ``Y`` has ``labels.max() + 1`` columns.
        gamma: ridge strength > 0.

    Returns:
        ``W`` ``[b, C]`` in ``x``'s dtype.
    """
    y = F.one_hot(labels.long(), int(labels.max()) + 1).to(x.dtype)
    a = x.T @ x
    a.diagonal().add_(gamma)
    return torch.linalg.solve(a, x.T @ y)
