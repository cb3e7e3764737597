"""Searching the class orders of highest Curriculum Designer score.

For few classes every order is scored (:func:`all_orders` with the vectorised
:func:`~neve.benchmarks.curriculum_score.score_orders`); for many, a beam search
that follows the score's walk from both ends (:func:`beam_search_orders`)
followed by a swap local search (:func:`local_search`). :func:`rank_orders`
chooses between them.
"""

from __future__ import annotations

import itertools
import math

import numpy as np

from ..models.core.checks import Int, OneOf, Seed, validated
from .curriculum_score import score_orders, score_steps

SEARCHES = ("auto", "exhaustive", "beam")


def all_orders(n: int) -> np.ndarray:
    """All ``n!`` permutations of ``range(n)`` as an ``[n!, n]`` int array (lexicographic)."""
    dtype = np.int16 if n < 2**15 else np.int64
    flat = itertools.chain.from_iterable(itertools.permutations(range(n)))
    return np.fromiter(flat, dtype=dtype, count=math.factorial(n) * n).reshape(-1, n)


def beam_search_orders(
    d: np.ndarray,
    var: np.ndarray,
    beam_width: int = 16,
    candidates: int = 12,
) -> np.ndarray:
    """Beam search for high-scoring orders (neve's search for many classes).

    The score is a walk from both ends: step ``k`` fixes the successor
    ``o_{k+1}`` and the mirrored class ``o_{n-1-k}`` of ``o_k``, and its gain
    ``(1 - d[o_k, o_{n-1-k}]) + d[o_k, o_{k+1}]`` depends only on classes already
    placed. The beam starts from every class as ``o_0`` (gain ``1 - var``); each
    state is extended by pairs (successor, mirror) drawn from the ``candidates``
    unused classes farthest from ``o_k`` and the ``candidates`` closest to it, and
    the ``beam_width`` best partial orders are kept. Cost: ``O(n * beam_width *
    candidates^2)`` score evaluations.

    Returns:
        ``[B, n]`` int array of complete orders (distinct), best first.
    """
    n = d.shape[0]
    width = max(int(beam_width), 1)
    m = min(int(candidates), n)
    # the first layer: every class as o_0 (a wider first layer than the beam)
    first = np.argsort(var, kind="stable")[: width * 4]
    orders = np.full((first.size, n), -1, dtype=np.int64)
    orders[:, 0] = first
    used = np.zeros((first.size, n), dtype=bool)
    used[np.arange(first.size), first] = True
    scores = 1.0 - var[first]
    for k in range(score_steps(n)):
        nxt, mir = k + 1, n - 1 - k
        b_idx = np.arange(orders.shape[0])
        row = d[orders[:, k]]  # [B, n] distances from o_k
        if nxt == mir:  # even n, last step: one class left, constant gain 1
            orders[:, nxt] = np.argmax(~used, axis=1)
            scores = scores + 1.0
            break
        far = np.argsort(np.where(used, np.inf, -row), axis=1, kind="stable")[:, :m]
        near = np.argsort(np.where(used, np.inf, row), axis=1, kind="stable")[:, :m]
        a = np.repeat(far, m, axis=1)  # [B, m*m] successor candidates
        b = np.tile(near, (1, m))  # [B, m*m] mirror candidates
        gains = row[b_idx[:, None], a] + 1.0 - row[b_idx[:, None], b]
        bad = (a == b) | used[b_idx[:, None], a] | used[b_idx[:, None], b]
        total = np.where(bad, -np.inf, scores[:, None] + gains).ravel()
        keep = np.argsort(-total, kind="stable")[:width]
        keep = keep[np.isfinite(total[keep])]
        parent, pick = np.divmod(keep, a.shape[1])
        orders = orders[parent].copy()
        used = used[parent].copy()
        rows = np.arange(parent.size)
        orders[rows, nxt] = a[parent, pick]
        orders[rows, mir] = b[parent, pick]
        used[rows, a[parent, pick]] = True
        used[rows, b[parent, pick]] = True
        scores = total[keep]
    best = np.argsort(-scores, kind="stable")[:width]
    return orders[best]


def local_search(
    order: np.ndarray,
    d: np.ndarray,
    var: np.ndarray,
    max_rounds: int = 200,
    sample_pairs: int = 4096,
    seed: int = 0,
) -> np.ndarray:
    """Swap local search (best improvement) starting from ``order``.

    Each round scores swapped copies of the current order with
    :func:`score_orders` -- all ``n(n-1)/2`` swaps when that is at most
    ``sample_pairs``, else ``sample_pairs`` random swaps -- and moves to the best
    one if it improves the score. Stops after a round without improvement over
    all swaps, or after ``max_rounds`` rounds (or 5 rounds in a row without
    improvement with sampled swaps).
    """
    n = len(order)
    rng = np.random.default_rng(seed)
    cur = np.asarray(order, dtype=np.int64).copy()
    cur_s = float(score_orders(cur[None], d, var)[0])
    iu, ju = np.triu_indices(n, k=1)
    exhaustive = iu.size <= sample_pairs
    stale = 0
    for _ in range(max_rounds):
        if exhaustive:
            i, j = iu, ju
        else:
            i = rng.integers(0, n, sample_pairs)
            j = (i + rng.integers(1, n, sample_pairs)) % n
        cand = np.repeat(cur[None], i.size, axis=0)
        rows = np.arange(i.size)
        cand[rows, i], cand[rows, j] = cur[j], cur[i]
        s = score_orders(cand, d, var)
        best = int(np.argmax(s))
        if s[best] > cur_s + 1e-12:
            cur, cur_s, stale = cand[best].copy(), float(s[best]), 0
        elif exhaustive:
            break
        else:
            stale += 1
            if stale >= 5:
                break
    return cur


def default_beam_width(n: int) -> int:
    """Beam width used when none is given: ``clip(20000 // n, 16, 256)``.

    256 for up to 78 classes, 200 for 100 classes, 20 for 1000. How often the
    default finds the exhaustive optimum on random 8-class instances is checked
    by ``tests/test_curriculum.py``.
    """
    return int(min(256, max(16, 20000 // max(n, 1))))


@validated(top_k=Int(1, optional=True), search=OneOf(*SEARCHES), beam_width=Int(1, optional=True),
           seed=Seed())
def rank_orders(
    d: np.ndarray,
    var: np.ndarray,
    top_k: int | None = None,
    search: str = "auto",
    beam_width: int | None = None,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Orders (as index arrays) of ``range(n)`` best first, and their scores.

    ``search="exhaustive"`` scores all ``n!`` orders with :func:`score_orders`
    (ties keep lexicographic order); ``"beam"`` runs :func:`beam_search_orders`
    and polishes the beam orders with :func:`local_search` (every beam order for
    ``n <= 20``, the best one otherwise; 20 rounds for ``n > 200``); ``"auto"`` is
    exhaustive for ``n <= 8``. ``beam_width=None`` uses :func:`default_beam_width`.

    Args:
        d: ``[n, n]`` row-normalised distances.
        var: ``[n]`` rescaled row variances.
        top_k: keep the ``top_k`` best (None: all scored orders).
        search: one of :data:`SEARCHES`.
        beam_width: beam width of ``"beam"``.
        seed: seed of the local search's sampled swaps.

    Returns:
        ``(orders [M, n] int, scores [M] float64)``, best first.
    """
    n = d.shape[0]
    if search == "auto":
        search = "exhaustive" if n <= 8 else "beam"
    if search == "exhaustive":
        if math.factorial(n) > 40_000_000:
            raise ValueError(f"exhaustive search over {n}! orders is too large; use search='beam'")
        orders = all_orders(n)
    else:
        width = default_beam_width(n) if beam_width is None else beam_width
        beam = beam_search_orders(d, var, beam_width=width)
        # polish every beam order for few classes, only the best one for many
        polish = len(beam) if n <= 20 else 1
        rounds = 200 if n <= 200 else 20
        polished = [
            local_search(o, d, var, max_rounds=rounds, seed=seed + i)
            for i, o in enumerate(beam[:polish])
        ]
        orders = np.unique(np.concatenate([np.stack(polished), beam[polish:]]), axis=0)
    scores = score_orders(orders, d, var)
    rank = np.argsort(-scores, kind="stable")
    if top_k is not None:
        rank = rank[:top_k]
    return orders[rank], scores[rank]
