"""Curriculum-designed class orders (Singh et al., "Learning to Learn: How to
Continuously Teach Humans and Machines", ICCV 2023).

The Curriculum Designer (CD) ranks the orders in which classes are taught from
the similarity of class prototypes under a frozen teacher network:

1. prototypes ``p_c``: mean teacher embedding of up to ``samples_per_class``
   training images of class ``c`` (:func:`class_prototypes`);
2. ``D[i, j]``: cosine (default) or Euclidean distance between prototypes
   (:func:`prototype_distances`);
3. ``d = D / D.sum(1)``: each row divided by its sum (:func:`normalize_rows`);
4. ``var[i] = Var(d[i, :])`` (population variance over the whole row, the zero
   diagonal included), rescaled so that ``sum(var) = 1`` (:func:`row_variances`);
5. the score of an order ``o = (o_0, ..., o_{n-1})`` (:func:`curriculum_score`)::

       S(o) = (1 - var[o_0])
              + sum_{k=0}^{K-1} [ (1 - d[o_k, o_{n-1-k}]) + d[o_k, o_{k+1}] ],
       K = ceil((n - 1) / 2).

   A central first class (low variance) is rewarded; each early class is
   rewarded for being far from its successor and close to the class at the
   mirrored position from the end (late classes resemble early ones). For
   ``n = 5`` this is ``(1-var[a]) + d(a,b) + (1-d(a,e)) + d(b,c) + (1-d(b,d))``.

This is the form of the authors' ``ScoreCurriculum`` (Learning2Learn,
``continual baselines/utils/curriculum_utils.py``: the walk adds the mirrored and
successor terms for ``k = 0, 1, ...`` and stops once ``1 + 2(k+1) >= n``), with
their normalisation (``inter-dataset similarity.ipynb``: rows divided by their
sum, ``np.var`` of each full row, variances divided by their sum). For **even**
``n`` the last step (``k = n/2 - 1``) has ``o_{n-1-k} = o_{k+1}``, so it adds
``1 - d + d = 1``: a constant that does not change the ranking, and the middle
pair's adjacency is not rewarded. neve implements exactly this variant. ``d`` is
not symmetric (rows are normalised separately).

Note on the teacher: the paper uses an ImageNet SqueezeNet 1.1; neve uses the
pretrained EfficientNet-Lite0 of :mod:`neve.models` (1280-d pooled features).
The authors average batch means; neve takes the plain mean of the embeddings.
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Sequence

import numpy as np
import torch
from avalanche.benchmarks import nc_benchmark
from avalanche.benchmarks.scenarios.generic_scenario import CLScenario, EagerCLStream
from avalanche.benchmarks.scenarios.online import OnlineCLExperience
from torch.utils.data import Dataset

from neve.benchmarks.datasets import IndexedSubset

DISTANCES = ("cosine", "euclidean")


# ----------------------------------------------------------------------------- pure functions
def _as_class_list(classes, name: str) -> list[int]:
    try:
        out = [int(c) for c in classes]
    except (TypeError, ValueError) as err:
        raise ValueError(
            f"{name} must be a sequence of integer class labels, got {classes!r}"
        ) from err
    return out


def check_order(
    order: Sequence[int], classes: Sequence[int] | None = None, name: str = "order"
) -> list[int]:
    """Validate a class order and return it as a list of ints.

    Args:
        order: class labels in teaching order.
        classes: if given, ``order`` must be a permutation of exactly these classes.
        name: argument name used in error messages.

    Raises:
        ValueError: fewer than 2 classes, a repeated class, a missing class or a
            class outside ``classes`` -- naming them.
    """
    order = _as_class_list(order, name)
    if len(order) < 2:
        raise ValueError(f"{name} must hold at least 2 classes, got {order}")
    counts: dict[int, int] = {}
    for c in order:
        counts[c] = counts.get(c, 0) + 1
    repeated = sorted(c for c, k in counts.items() if k > 1)
    if repeated:
        raise ValueError(f"{name} repeats classes {repeated}: {order}")
    if classes is not None:
        expected = set(_as_class_list(classes, "classes"))
        missing = sorted(expected - set(order))
        extra = sorted(set(order) - expected)
        if missing or extra:
            raise ValueError(
                f"{name} must be a permutation of classes {sorted(expected)}: "
                + (f"it misses {missing}" if missing else "")
                + ("; " if missing and extra else "")
                + (f"it has classes not among them {extra}" if extra else "")
            )
    return order


def _features_and_targets(features, targets) -> tuple[torch.Tensor, torch.Tensor]:
    """``features`` as an ``[N, D]`` tensor and ``targets`` as ``[N]`` int64, or a ValueError."""
    features = torch.as_tensor(features)
    targets = torch.as_tensor(targets).long()
    if features.dim() != 2 or features.shape[0] != targets.shape[0]:
        raise ValueError(
            f"features must be [N, D] and targets [N], got {tuple(features.shape)} and "
            f"{tuple(targets.shape)}"
        )
    return features, targets


def class_prototypes(
    features: torch.Tensor, targets: torch.Tensor, classes: Sequence[int]
) -> torch.Tensor:
    """Mean feature vector of each class (Singh et al. 2023, Sec. 3, CD step 1).

    Args:
        features: ``[N, D]`` embeddings.
        targets: ``[N]`` integer labels.
        classes: the ``C`` classes, in the row order of the result.

    Returns:
        ``[C, D]`` float64 prototypes.

    Raises:
        ValueError: a class of ``classes`` has no sample in ``targets``.
    """
    features, targets = _features_and_targets(features, targets)
    counts = [int((targets == c).sum()) for c in classes]
    empty = [c for c, k in zip(classes, counts, strict=True) if k == 0]
    if empty:
        raise ValueError(f"classes {empty} have no samples in targets")
    return torch.stack([features[targets == c].double().mean(0) for c in classes])


def prototype_distances(prototypes: torch.Tensor, distance: str = "cosine") -> np.ndarray:
    """Pairwise distances ``D[i, j]`` between prototypes (CD step 2).

    Args:
        prototypes: ``[C, D]``.
        distance: ``"cosine"`` (``1 - cos``, as ``scipy.spatial.distance.cosine``)
            or ``"euclidean"``.

    Returns:
        ``[C, C]`` float64 array, zero diagonal, symmetric.
    """
    if distance not in DISTANCES:
        raise ValueError(f"distance must be one of {DISTANCES}, got {distance!r}")
    p = torch.as_tensor(prototypes).double()
    if distance == "cosine":
        norms = p.norm(dim=1, keepdim=True)
        if bool((norms == 0).any()):
            raise ValueError("a prototype is the zero vector: cosine distance is undefined")
        u = p / norms
        d = 1.0 - u @ u.T
    else:
        d = torch.cdist(p, p)
    d = d.clamp_min(0.0).numpy().copy()
    np.fill_diagonal(d, 0.0)
    return d


def normalize_rows(distances: np.ndarray) -> np.ndarray:
    """Each row divided by its sum, so rows sum to 1 (CD step 3).

    Args:
        distances: ``[C, C]`` non-negative distances.

    Raises:
        ValueError: a row sums to zero (its class's prototype equals all others).
    """
    d = np.asarray(distances, dtype=np.float64)
    sums = d.sum(axis=1, keepdims=True)
    zero = np.flatnonzero(sums[:, 0] <= 0)
    if zero.size:
        raise ValueError(f"rows {zero.tolist()} of the distance matrix sum to zero")
    return d / sums


def row_variances(normalized: np.ndarray) -> np.ndarray:
    """Variance of each row of the normalised distances, rescaled to sum to 1 (CD step 4).

    Population variance (``ddof=0``) over the whole row, diagonal included, as in
    the authors' code.

    Returns:
        ``[C]`` float64, summing to 1.
    """
    v = np.var(np.asarray(normalized, dtype=np.float64), axis=1)
    total = v.sum()
    if total <= 0:
        raise ValueError("all rows of the normalised distances have zero variance")
    return v / total


def score_steps(n: int) -> int:
    """Number of walk steps ``K = ceil((n - 1) / 2)`` of the score for ``n`` classes."""
    return n // 2


def curriculum_score(order: Sequence[int], d: np.ndarray, var: np.ndarray) -> float:
    """CD score ``S(o)`` of one order (module docstring; Singh et al. 2023, Sec. 3).

    Args:
        order: ``n`` distinct indices into ``d`` / ``var`` (positions, not labels).
        d: ``[n, n]`` row-normalised distances.
        var: ``[n]`` rescaled row variances.
    """
    o = list(order)
    n = len(o)
    s = 1.0 - float(var[o[0]])
    for k in range(score_steps(n)):
        s += (1.0 - float(d[o[k], o[n - 1 - k]])) + float(d[o[k], o[k + 1]])
    return s


def score_orders(orders: np.ndarray, d: np.ndarray, var: np.ndarray) -> np.ndarray:
    """Vectorised :func:`curriculum_score` over many orders.

    Args:
        orders: ``[M, n]`` integer array, each row a permutation of ``range(n)``.
        d: ``[n, n]`` row-normalised distances.
        var: ``[n]`` rescaled row variances.

    Returns:
        ``[M]`` float64 scores.
    """
    orders = np.asarray(orders)
    n = orders.shape[1]
    s = 1.0 - var[orders[:, 0]]
    for k in range(score_steps(n)):
        s = s + (1.0 - d[orders[:, k], orders[:, n - 1 - k]]) + d[orders[:, k], orders[:, k + 1]]
    return s


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


# ----------------------------------------------------------------------------- the designer
class CurriculumDesigner:
    """Rank class orders by the Curriculum Designer score (Singh et al., ICCV 2023).

    The constructor only stores parameters; :meth:`fit` / :meth:`fit_features`
    compute the prototypes and the distance matrix.

    Args:
        teacher: a frozen feature extractor. ``None`` uses
            ``neve.models.pretrained_backbone()`` (EfficientNet-Lite0, 64 px) with
            its disk-cached :func:`~neve.models.extract_features`. Any other
            ``nn.Module`` is run in eval mode on the dataset's images (its
            ``transform`` attribute, if any, is applied first).
        distance: ``"cosine"`` or ``"euclidean"`` distance between prototypes.
        samples_per_class: images per class used for the prototypes (``None``: all).
        seed: seed of the choice of those images.
        device: where the teacher runs.

    Attributes (after fitting):
        classes_: ``list[int]``, the fitted classes in ascending order.
        prototypes_: ``[C, D]`` float64 tensor.
        distances_: ``[C, C]`` float64 raw distance matrix (also ``distance_matrix``).
    """

    def __init__(
        self,
        teacher: torch.nn.Module | None = None,
        distance: str = "cosine",
        samples_per_class: int | None = 500,
        seed: int = 0,
        device: str | torch.device = "cpu",
    ) -> None:
        self.teacher = teacher
        self.distance = distance
        self.samples_per_class = samples_per_class
        self.seed = seed
        self.device = device

    # -- fitting
    def _check_params(self) -> None:
        if self.distance not in DISTANCES:
            raise ValueError(f"distance must be one of {DISTANCES}, got {self.distance!r}")
        if self.samples_per_class is not None and int(self.samples_per_class) < 1:
            raise ValueError(
                f"samples_per_class must be >= 1 or None, got {self.samples_per_class}"
            )

    def _subsample(self, targets: torch.Tensor, classes: list[int]) -> torch.Tensor:
        """Indices of up to ``samples_per_class`` items of each class (seeded shuffle)."""
        gen = torch.Generator().manual_seed(int(self.seed))
        perm = torch.randperm(len(targets), generator=gen)
        keep = []
        for c in classes:
            idx = perm[targets[perm] == c]
            keep.append(
                idx if self.samples_per_class is None else idx[: int(self.samples_per_class)]
            )
        return torch.sort(torch.cat(keep)).values

    def _resolve_classes(self, targets: torch.Tensor, classes) -> list[int]:
        present = sorted(torch.unique(targets).tolist())
        if classes is None:
            classes = present
        classes = _as_class_list(classes, "classes")
        if len(classes) < 2:
            raise ValueError(f"classes must hold at least 2 classes, got {classes}")
        repeated = sorted({c for c in classes if classes.count(c) > 1})
        if repeated:
            raise ValueError(f"classes repeats {repeated}")
        empty = sorted(set(classes) - set(present))
        if empty:
            raise ValueError(f"classes {empty} have no samples in the data (present: {present})")
        return sorted(classes)

    def fit_features(
        self, features: torch.Tensor, targets: torch.Tensor, classes: Sequence[int] | None = None
    ) -> CurriculumDesigner:
        """Fit from precomputed teacher embeddings ``[N, D]`` and labels ``[N]``.

        ``samples_per_class`` of each class are drawn (seeded) before averaging.
        """
        self._check_params()
        features, targets = _features_and_targets(features, targets)
        classes = self._resolve_classes(targets, classes)
        keep = self._subsample(targets, classes)
        protos = class_prototypes(features[keep], targets[keep], classes)
        dist = prototype_distances(protos, self.distance)
        normalize_rows(dist)  # raises now if two prototypes coincide
        self.classes_ = classes
        self.prototypes_ = protos
        self.distances_ = torch.from_numpy(dist)
        return self

    def fit(self, dataset: Dataset, classes: Sequence[int] | None = None) -> CurriculumDesigner:
        """Embed up to ``samples_per_class`` images per class of ``dataset`` and fit.

        Args:
            dataset: items ``(image, label, ...)`` with ``.targets``.
            classes: classes to fit (default: all classes of ``dataset``).
        """
        self._check_params()
        if not hasattr(dataset, "targets"):
            raise ValueError("dataset must have .targets")
        targets = torch.as_tensor(dataset.targets).long()
        classes = self._resolve_classes(targets, classes)
        subset = IndexedSubset(dataset, self._subsample(targets, classes))
        feats, labels = self._embed(subset)
        return self.fit_features(feats, labels, classes)

    def _embed(self, dataset: Dataset) -> tuple[torch.Tensor, torch.Tensor]:
        from neve.models import Backbone, extract_features, pretrained_backbone

        teacher = self.teacher if self.teacher is not None else pretrained_backbone()
        if isinstance(teacher, Backbone):
            return extract_features(teacher, dataset, device=self.device)
        from torch.utils.data import DataLoader
        from tqdm.auto import tqdm

        device = torch.device(self.device)
        was_training = teacher.training
        teacher.eval().to(device)
        transform = getattr(teacher, "transform", None)
        feats, labels = [], []
        with torch.no_grad():
            for batch in tqdm(DataLoader(dataset, batch_size=256), desc="teacher features"):
                x = batch[0].to(device)
                if transform is not None:
                    x = transform(x)
                feats.append(teacher(x).flatten(1).float().cpu())
                labels.append(torch.as_tensor(batch[1]).long())
        teacher.train(was_training)
        return torch.cat(feats), torch.cat(labels)

    # -- querying
    def _check_fitted(self) -> None:
        if not hasattr(self, "distances_"):
            raise RuntimeError("CurriculumDesigner is not fitted: call fit() or fit_features()")

    @property
    def distance_matrix(self) -> torch.Tensor:
        """``[C, C]`` raw distances between the prototypes of ``classes_``."""
        self._check_fitted()
        return self.distances_

    def _index(self, classes: list[int], name: str) -> np.ndarray:
        unknown = sorted(set(classes) - set(self.classes_))
        if unknown:
            raise ValueError(f"{name} holds classes {unknown} not fitted (fitted: {self.classes_})")
        pos = {c: i for i, c in enumerate(self.classes_)}
        return np.array([pos[c] for c in classes], dtype=np.int64)

    def normalized_distances(
        self, classes: Sequence[int] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Row-normalised distances ``d`` and rescaled variances ``var`` among ``classes``.

        As in the paper, the normalisation uses only the classes being ordered.
        Row/column ``i`` is ``classes[i]``.
        """
        self._check_fitted()
        classes = self.classes_ if classes is None else check_order(classes, name="classes")
        idx = self._index(classes, "classes")
        raw = self.distances_.numpy()[np.ix_(idx, idx)]
        d = normalize_rows(raw)
        return d, row_variances(d)

    def score(self, order: Sequence[int], classes: Sequence[int] | None = None) -> float:
        """CD score of ``order`` (class labels) among its own classes.

        Args:
            order: class labels in teaching order.
            classes: if given, ``order`` must be a permutation of them.
        """
        self._check_fitted()
        order = check_order(order, classes)
        self._index(order, "order")
        ref = sorted(order)
        d, var = self.normalized_distances(ref)
        pos = {c: i for i, c in enumerate(ref)}
        return curriculum_score([pos[c] for c in order], d, var)

    def rank(
        self,
        classes: Sequence[int] | None = None,
        top_k: int | None = None,
        search: str = "auto",
        return_scores: bool = False,
        beam_width: int | None = None,
    ):
        """Orders of ``classes`` best first.

        Args:
            classes: classes to order (default: all fitted classes).
            top_k: keep the ``top_k`` best (default: all orders when exhaustive,
                the whole final beam otherwise).
            search: ``"exhaustive"`` (all ``n!`` orders, vectorised), ``"beam"``
                (:func:`beam_search_orders` then :func:`local_search` on each
                beam order) or ``"auto"`` (exhaustive for ``n <= 8``).
            return_scores: also return the scores.
            beam_width: beam width of the search (``None``: :func:`default_beam_width`).

        Returns:
            ``list[tuple[int, ...]]`` of class orders, or ``(orders, scores)`` with
            ``scores`` a float64 array when ``return_scores``.
        """
        self._check_fitted()
        if search not in ("auto", "exhaustive", "beam"):
            raise ValueError(f"search must be 'auto', 'exhaustive' or 'beam', got {search!r}")
        if top_k is not None and int(top_k) < 1:
            raise ValueError(f"top_k must be >= 1 or None, got {top_k}")
        classes = self.classes_ if classes is None else sorted(check_order(classes, name="classes"))
        d, var = self.normalized_distances(classes)
        orders, scores = rank_orders(
            d, var, top_k=top_k, search=search, beam_width=beam_width, seed=self.seed
        )
        result = list(map(tuple, np.asarray(classes)[orders].tolist()))
        return (result, scores) if return_scores else result

    def best_order(self, classes: Sequence[int] | None = None) -> tuple[int, ...]:
        """The highest-scoring order of ``classes`` (default: all fitted classes)."""
        return self.rank(classes, top_k=1)[0]

    def plot(
        self,
        path: str | os.PathLike,
        order: Sequence[int] | None = None,
        class_names: Sequence[str] | None = None,
    ) -> None:
        """Save a heatmap of the row-normalised distances, rows and columns in ``order``.

        Args:
            path: image file to write (format from the suffix, e.g. ``.png``).
            order: class labels (default: :meth:`best_order`).
            class_names: names indexed by class label, for the tick labels.
        """
        from matplotlib.figure import Figure  # no pyplot: no GUI backend needed

        order = list(self.best_order() if order is None else check_order(order))
        self._index(order, "order")
        d, _ = self.normalized_distances(sorted(order))
        pos = {c: i for i, c in enumerate(sorted(order))}
        idx = [pos[c] for c in order]
        m = d[np.ix_(idx, idx)]
        ticks = [class_names[c] if class_names is not None else str(c) for c in order]
        fig = Figure(figsize=(1.0 + 0.5 * len(order), 0.8 + 0.5 * len(order)))
        ax = fig.add_subplot()
        im = ax.imshow(m, cmap="viridis")
        ax.set_xticks(range(len(order)), ticks, rotation=90)
        ax.set_yticks(range(len(order)), ticks)
        ax.set_title(f"normalised {self.distance} distance, score {self.score(order):.3f}")
        fig.colorbar(im, ax=ax)
        fig.tight_layout()
        fig.savefig(path, dpi=100)

    # -- state
    def state_dict(self) -> dict:
        """Parameters and fitted state as plain tensors / ints / strings."""
        state = {
            "distance": self.distance,
            "samples_per_class": self.samples_per_class,
            "seed": self.seed,
        }
        if hasattr(self, "distances_"):
            state.update(
                classes=torch.tensor(self.classes_),
                prototypes=self.prototypes_.clone(),
                distances=self.distances_.clone(),
            )
        return state

    def load_state_dict(self, state: dict) -> None:
        """Restore what :meth:`state_dict` returned (the teacher is not part of it)."""
        self.distance = state["distance"]
        self.samples_per_class = state["samples_per_class"]
        self.seed = state["seed"]
        if "distances" in state:
            self.classes_ = [int(c) for c in state["classes"]]
            self.prototypes_ = state["prototypes"].clone()
            self.distances_ = state["distances"].clone()


def default_beam_width(n: int) -> int:
    """Beam width used when none is given: ``clip(20000 // n, 16, 256)``.

    256 for up to 78 classes (it found the exhaustive optimum on 100 of 100
    random 8-class instances), 200 for 100 classes, 20 for 1000.
    """
    return int(min(256, max(16, 20000 // max(n, 1))))


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
    """
    n = d.shape[0]
    if search == "auto":
        search = "exhaustive" if n <= 8 else "beam"
    if search == "exhaustive":
        if math.factorial(n) > 40_000_000:
            raise ValueError(f"exhaustive search over {n}! orders is too large; use search='beam'")
        orders = all_orders(n)
    else:
        width = default_beam_width(n) if beam_width is None else int(beam_width)
        if width < 1:
            raise ValueError(f"beam_width must be >= 1 or None, got {beam_width}")
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
        rank = rank[: int(top_k)]
    return orders[rank], scores[rank]


# ----------------------------------------------------------------------------- benchmarks
def select_classes(dataset: Dataset, classes: Sequence[int]) -> IndexedSubset:
    """The items of ``dataset`` whose label is in ``classes`` (keeps ``.targets``)."""
    classes = _as_class_list(classes, "classes")
    targets = torch.as_tensor(dataset.targets).long()
    present = set(torch.unique(targets).tolist())
    absent = sorted(set(classes) - present)
    if absent:
        raise ValueError(
            f"classes {absent} have no samples in the dataset (present: {sorted(present)})"
        )
    mask = torch.isin(targets, torch.tensor(classes))
    return IndexedSubset(dataset, torch.nonzero(mask).flatten())


class BoundaryAwareOnlineExperience(OnlineCLExperience):
    """An :class:`OnlineCLExperience` that also carries class information.

    Works around two problems of Avalanche 0.6.0's ``split_online_stream``:
    its sub-experiences have no ``classes_in_this_experience`` (which
    ``IncrementalClassifier`` and other dynamic modules read), and
    ``is_last_subexp`` is never set when the experience size divides the data.
    Here ``classes_in_this_experience`` (the classes of this mini-experience),
    ``previous_classes``, ``classes_seen_so_far`` and ``future_classes`` are
    readable in training and evaluation.
    """

    def __init__(
        self,
        *,
        classes_in_this_experience,
        previous_classes,
        classes_seen_so_far,
        future_classes,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.classes_in_this_experience = sorted(classes_in_this_experience)
        self.previous_classes = sorted(previous_classes)
        self.classes_seen_so_far = sorted(classes_seen_so_far)
        self.future_classes = sorted(future_classes)
        self._as_attributes(
            "classes_in_this_experience",
            "previous_classes",
            "classes_seen_so_far",
            "future_classes",
            use_in_train=True,
            use_in_eval=True,
        )


def split_online(
    stream,
    experience_size: int,
    shuffle: bool = True,
    seed: int = 0,
    access_task_boundaries: bool = True,
    name: str = "train",
) -> EagerCLStream:
    """Split each experience of ``stream`` into mini-experiences of ``experience_size`` items.

    neve's replacement for Avalanche 0.6.0's ``split_online_stream``: the
    last mini-experience of every experience has ``is_last_subexp=True`` (also
    when ``experience_size`` divides its size), and every mini-experience has
    ``classes_in_this_experience`` and related fields (see
    :class:`BoundaryAwareOnlineExperience`). Data is shuffled within each
    experience with ``seed + experience index``. The stream is eager (a list).
    """
    if int(experience_size) < 1:
        raise ValueError(f"experience_size must be >= 1, got {experience_size}")
    size = int(experience_size)
    exps = list(stream)
    all_classes: set[int] = set()
    for exp in exps:
        all_classes |= set(int(c) for c in exp.dataset.targets.uniques)
    subs, seen = [], set()
    for e_idx, exp in enumerate(exps):
        ds = exp.dataset
        n = len(ds)
        if shuffle:
            gen = torch.Generator().manual_seed(int(seed) + e_idx)
            idx = torch.randperm(n, generator=gen).tolist()
        else:
            idx = list(range(n))
        chunks = [idx[i : i + size] for i in range(0, n, size)]
        targets = torch.as_tensor(list(ds.targets))
        prev = set(seen)
        for c_idx, chunk in enumerate(chunks):
            cls = set(torch.unique(targets[chunk]).tolist())
            seen |= cls
            subs.append(
                BoundaryAwareOnlineExperience(
                    dataset=ds.subset(chunk),
                    origin_experience=exp,
                    is_first_subexp=c_idx == 0,
                    is_last_subexp=c_idx == len(chunks) - 1,
                    sub_stream_length=len(chunks),
                    access_task_boundaries=access_task_boundaries,
                    classes_in_this_experience=cls,
                    previous_classes=prev,
                    classes_seen_so_far=set(seen),
                    future_classes=all_classes - seen,
                )
            )
            prev = set(seen)
    return EagerCLStream(name=name, exps=subs)


def curriculum_benchmark(
    train: Dataset,
    test: Dataset,
    order: Sequence[int],
    classes_per_experience: int = 1,
    online: bool = False,
    mb_size: int = 64,
    seed: int = 0,
) -> CLScenario:
    """Class-incremental benchmark whose experiences follow ``order`` exactly.

    Experience ``i`` holds classes ``order[i*k:(i+1)*k]`` (``k =
    classes_per_experience``); labels keep their original values. Built with
    Avalanche's ``nc_benchmark(..., fixed_class_order=order)``.

    Args:
        train, test: datasets with ``.targets``; every class present in ``train``
            must appear in ``order`` (use :func:`select_classes` to pick a subset).
        order: class labels in teaching order.
        classes_per_experience: classes per experience; must divide ``len(order)``.
        online: if True, ``train_stream`` is the single-pass online stream of
            :func:`split_online` (mini-experiences of ``mb_size`` items, which
            know their classes and their last mini-experience); the offline
            per-class stream is ``train_stream`` of ``online=False``.
        mb_size: items per online mini-experience.
        seed: shuffle seed of the online split.

    Raises:
        ValueError: bad order (repeats, misses a class of ``train``, fewer than 2
            classes), classes of ``order`` with no samples in ``train`` or
            ``test``, or ``classes_per_experience`` not dividing ``len(order)``.
    """
    order = check_order(order)
    for name, ds in (("train", train), ("test", test)):
        if not hasattr(ds, "targets"):
            raise ValueError(f"{name} must have .targets")
    k = int(classes_per_experience)
    if k < 1 or len(order) % k:
        raise ValueError(
            f"classes_per_experience must be >= 1 and divide len(order)={len(order)}, got {k}"
        )
    train_classes = set(torch.unique(torch.as_tensor(train.targets)).tolist())
    test_classes = set(torch.unique(torch.as_tensor(test.targets)).tolist())
    for name, present in (("train", train_classes), ("test", test_classes)):
        absent = sorted(set(order) - present)
        if absent:
            raise ValueError(f"order holds classes {absent} with no samples in {name}")
    missing = sorted(train_classes - set(order))
    if missing:
        raise ValueError(
            f"order misses classes {missing} present in train; select the classes to use "
            "with neve.benchmarks.select_classes first"
        )
    extra_test = sorted(test_classes - set(order))
    if extra_test:
        test = select_classes(test, order)
    bm = nc_benchmark(
        train,
        test,
        n_experiences=len(order) // k,
        task_labels=False,
        fixed_class_order=order,
        class_ids_from_zero_from_first_exp=False,
    )
    if not online:
        return bm
    if int(mb_size) < 1:
        raise ValueError(f"mb_size must be >= 1, got {mb_size}")
    online_stream = split_online(bm.train_stream, mb_size, shuffle=True, seed=seed)
    return CLScenario([online_stream, bm.test_stream])
