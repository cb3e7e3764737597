"""The Curriculum Designer (Singh et al., "Learning to Learn", ICCV 2023, Sec. 3).

:class:`CurriculumDesigner` embeds up to ``max_per_class`` training images per
class with a frozen teacher, keeps the class prototypes and their distance
matrix, and ranks class orders by the CD score of
:mod:`neve.benchmarks.curriculum_score` with the search of
:mod:`neve.benchmarks.curriculum_search`.

Note on the teacher: the paper uses an ImageNet SqueezeNet 1.1; neve uses the
pretrained EfficientNet-Lite0 of :mod:`neve.models` (1280-d pooled features).
The authors average batch means; neve takes the plain mean of the embeddings.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from ..models.backbones import Backbone, pretrained_backbone
from ..models.core.checks import Function, Instance, Int, Registered, Seed, check_bool, validate
from ..models.core.data_checks import check_labelled
from ..models.core.distributed import default_reduction, shard
from ..models.features import extract_features
from .class_distances import CLASS_DISTANCES
from .curriculum_plot import save_distance_heatmap
from .curriculum_score import (
    as_class_list,
    check_order,
    class_prototypes,
    curriculum_score,
    features_and_targets,
    normalize_rows,
    row_variances,
)
from .curriculum_search import rank_orders
from .datasets import IndexedSubset, balanced_indices


class CurriculumDesigner:
    """Rank class orders by the Curriculum Designer score (Singh et al., ICCV 2023).

    The constructor only stores parameters; :meth:`fit` / :meth:`fit_features`
    compute the prototypes and the distance matrix.

    Args:
        teacher: a frozen feature extractor, run by
            :func:`~neve.models.extract_features` (eval mode, its ``transform``
            attribute, if any, applied first, outputs flattened to ``[N, D]``).
            ``None`` uses ``neve.models.pretrained_backbone()`` (EfficientNet-Lite0,
            64 px). A :class:`~neve.models.Backbone`'s features are cached on
            disk; those of any other module or callable are not.
        distance: a name of :data:`~neve.benchmarks.class_distances.CLASS_DISTANCES`:
            ``"cosine"`` or ``"euclidean"`` between prototypes; between the
            classes' feature samples (up to ``max_per_class`` each,
            :mod:`neve.benchmarks.otdd`): ``"otdd"`` (exact OT with the
            label-augmented cost: ``W2^2``, within ``1.5 eps log n`` of the
            reference's entropic value), ``"otdd_entropic"`` (the reference's
            debiased Sinkhorn, eps 0.1, entropic label term, positive diagonal;
            small-scale features only), ``"otdd_gaussian"`` (Gaussian label
            term) or ``"w2"`` (2-Wasserstein, no label term).
        max_per_class: images per class used for the prototypes (``None``: all).
        seed: seed of the choice of those images.
        device: where the teacher runs.

    Attributes:
        classes_: after fitting, ``list[int]``, the fitted classes in ascending order.
        prototypes_: ``[C, D]`` float64 tensor.
        distances_: ``[C, C]`` float64 raw distance matrix (also ``distance_matrix``).
    """

    #: What each parameter must be, checked at construction and at each fit (scikit-learn's
    #: ``_parameter_constraints``); a state being loaded is checked against it too.
    parameter_constraints = {
        "teacher": Function(optional=True),
        "distance": Registered(CLASS_DISTANCES),
        "max_per_class": Int(1, optional=True),
        "seed": Seed(),
        "device": Instance(str, torch.device, what="a str or torch.device"),
    }

    def __init__(
        self,
        teacher: torch.nn.Module | Callable[[torch.Tensor], torch.Tensor] | None = None,
        *,
        distance: str = "cosine",
        max_per_class: int | None = 500,
        seed: int = 0,
        device: str | torch.device = "cpu",
    ) -> None:
        self.teacher = teacher
        self.distance = distance
        self.max_per_class = max_per_class
        self.seed = seed
        self.device = device
        self._check_params()

    # -- fitting
    def _check_params(self) -> None:
        """TypeError/ValueError naming the first bad parameter (run at construction and fit)."""
        validate(self.parameter_constraints,
                 {name: getattr(self, name) for name in self.parameter_constraints})

    def _subsample(self, targets: torch.Tensor, classes: list[int]) -> torch.Tensor:
        """Sorted indices of up to ``max_per_class`` items of each class (seeded shuffle)."""
        return balanced_indices(targets, self.max_per_class, classes, seed=int(self.seed))

    @staticmethod
    def _resolve_classes(targets: torch.Tensor, classes: Sequence[int] | None) -> list[int]:
        """``classes`` (default: all of ``targets``) checked and sorted."""
        present = sorted(torch.unique(targets).tolist())
        classes = check_order(present if classes is None else classes, name="classes")
        empty = sorted(set(classes) - set(present))
        if empty:
            raise ValueError(f"classes {empty} have no samples in the data (present: {present})")
        return sorted(classes)

    def fit_features(
        self, features: torch.Tensor, targets: torch.Tensor, classes: Sequence[int] | None = None
    ) -> CurriculumDesigner:
        """Fit from precomputed teacher embeddings ``[N, D]`` and labels ``[N]``.

        Up to ``max_per_class`` items of each class are drawn (seeded) before averaging.
        """
        self._check_params()
        features, targets = features_and_targets(features, targets)
        classes = self._resolve_classes(targets, classes)
        keep = self._subsample(targets, classes)
        protos = class_prototypes(features[keep], targets[keep], classes)
        kept, labels = features[keep], targets[keep]
        samples = [kept[labels == c] for c in classes]
        dist = CLASS_DISTANCES[self.distance](protos, samples)
        normalize_rows(dist)  # raises now if two prototypes coincide
        self.classes_ = classes
        self.prototypes_ = protos
        self.distances_ = torch.from_numpy(dist)
        return self

    def fit(self, dataset: Dataset, classes: Sequence[int] | None = None) -> CurriculumDesigner:
        """Embed up to ``max_per_class`` images per class of ``dataset`` and fit.

        Args:
            dataset: items ``(image, label, ...)`` with ``.targets``.
            classes: classes to fit (default: all classes of ``dataset``).
        """
        self._check_params()
        targets = check_labelled(dataset, "dataset")
        classes = self._resolve_classes(targets, classes)
        subset = IndexedSubset(dataset, self._subsample(targets, classes))
        feats, labels = self._embed(subset)
        return self.fit_features(feats, labels, classes)

    def _embed(self, dataset: Dataset) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher features ``[N, D]`` (float32, CPU) and labels ``[N]`` of ``dataset``."""
        teacher = self.teacher if self.teacher is not None else pretrained_backbone()
        # under torch.distributed: this process's contiguous shard, then all rows in
        # rank order (the one-process features in order, for every distance)
        feats, labels = extract_features(
            teacher,
            shard(dataset),
            device=self.device,
            cache=isinstance(teacher, Backbone),
            preprocess=True,
        )
        reduction = default_reduction()
        return reduction.rows(feats), reduction.rows(labels)

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
        classes = self.classes_ if classes is None else sorted(check_order(classes, name="classes"))
        check_bool(return_scores, "return_scores")
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
        order = list(self.best_order() if order is None else check_order(order))
        self._index(order, "order")
        d, _ = self.normalized_distances(sorted(order))
        pos = {c: i for i, c in enumerate(sorted(order))}
        idx = [pos[c] for c in order]
        try:
            ticks = [str(class_names[c]) if class_names is not None else str(c) for c in order]
        except (IndexError, KeyError, TypeError) as err:
            raise ValueError(
                f"class_names must be indexable by every class label of the order {order}"
            ) from err
        title = f"normalised {self.distance} distance, score {self.score(order):.3f}"
        save_distance_heatmap(d[np.ix_(idx, idx)], ticks, title, path)

    # -- state
    def state_dict(self) -> dict:
        """Parameters and fitted state as plain tensors / ints / strings."""
        state = {
            "distance": self.distance,
            "max_per_class": self.max_per_class,
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
        """Restore what :meth:`state_dict` returned (the teacher is not part of it).

        The whole state is checked before anything is changed.
        """
        names = ("distance", "max_per_class", "seed")
        if not isinstance(state, Mapping):
            raise ValueError("state must be a CurriculumDesigner.state_dict() mapping")
        if not set(names) <= state.keys():
            raise ValueError("state must be a CurriculumDesigner.state_dict() mapping, without "
                             f"{sorted(set(names) - state.keys())}")
        distance, max_per_class, seed = (self.parameter_constraints[name].check(
            state[name], f"state's {name}") for name in names)
        fitted = None
        if "distances" in state:
            classes = as_class_list(state["classes"], "state's classes")
            protos = torch.as_tensor(state["prototypes"])
            dists = torch.as_tensor(state["distances"])
            c = len(classes)
            if protos.dim() != 2 or protos.shape[0] != c or tuple(dists.shape) != (c, c):
                raise ValueError(
                    f"state's prototypes [C, D] and distances [C, C] must match its {c} classes, "
                    f"got {tuple(protos.shape)} and {tuple(dists.shape)}"
                )
            if not (bool(torch.isfinite(protos).all()) and bool(torch.isfinite(dists).all())):
                raise ValueError("state's prototypes and distances must be finite")
            fitted = (classes, protos.clone(), dists.clone())
        self.distance, self.max_per_class, self.seed = distance, max_per_class, seed
        if fitted is not None:
            self.classes_, self.prototypes_, self.distances_ = fitted
