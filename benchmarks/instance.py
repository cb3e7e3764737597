"""Instance-recognition tests and many-class CFSL episodes (Kowadlo et al., 2022).

Kowadlo, Ahmed, Mayan, Rawlinson, "Expanding continual few-shot learning
benchmarks to include recognition of specific instances" (2022) extends the CFSL
framework of Antoniou et al. (arXiv:2004.11967). A CFSL episode shows a learner a
stream of small support sets and then asks it to classify queries from all of
them. The paper adds

* the *instance test*: one episode draws ``N`` distinct images of ONE class and
  gives each image its own label (an N-way task); the images come as ``S``
  support sets of ``N / S`` images; the queries are the same images again, clean
  or corrupted (occlusion, pixel noise);
* a class-level CFSL variant with many classes (:func:`cfsl_episodes`).

Every episode is an Avalanche benchmark: its ``train_stream`` holds the ``S``
support sets (one experience each, in order) and its ``test_stream`` one
experience with all queries. Episode ``e`` depends only on ``(seed, e)``, so the
first episodes of two calls with the same seed are identical, whatever
``n_episodes``, ``support_sets`` or ``corruption``: the same images (and, for
the same corruption and severity, the same corrupted queries) come back.

The query corruptions live in :mod:`neve.benchmarks.corruptions`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
from avalanche.benchmarks.scenarios.dataset_scenario import benchmark_from_datasets
from avalanche.benchmarks.scenarios.generic_scenario import CLScenario
from avalanche.benchmarks.scenarios.supervised import with_classes_timeline
from avalanche.benchmarks.utils.classification_dataset import (
    _as_taskaware_supervised_classification_dataset,
)
from torch.utils.data import Dataset

from ..models.core.checks import Int, Rule, Seed, divides, same_length, validated
from ..models.core.data_checks import Labels, Tensor, check_labelled
from .corruptions import corrupt_images, make_corruption
from .datasets import LabelledTensorDataset


def _episode_rng(seed: int, episode: int, stream: int) -> np.random.Generator:
    """Independent generator for one episode; ``stream`` 0 draws images, 1 corrupts."""
    return np.random.default_rng([int(seed), int(episode), int(stream)])


def _torch_seed(rng: np.random.Generator) -> int:
    return int(rng.integers(0, 2**62))


def _indices_by_class(dataset: Dataset) -> dict[int, np.ndarray]:
    targets = check_labelled(dataset, "dataset").numpy()
    if len(targets) != len(dataset):
        raise ValueError(
            f"dataset.targets must hold one label per item, got {len(targets)} labels "
            f"for {len(dataset)} items"
        )
    return {int(c): np.flatnonzero(targets == c) for c in np.unique(targets)}


def _stack_images(dataset: Dataset, indices: Sequence[int]) -> torch.Tensor:
    images = torch.stack([torch.as_tensor(dataset[int(i)][0]) for i in indices])
    _check_finite_images(images, "dataset", [int(i) for i in indices])
    return images


def _check_finite_images(images: torch.Tensor, name: str, indices: Sequence[int]) -> None:
    """Refuse floating-point images with NaN or inf, naming the argument and the items."""
    if images.is_floating_point() and images.numel():
        bad = ~torch.isfinite(images.reshape(len(images), -1)).all(1)
        if bool(bad.any()):
            items = [indices[i] for i in bad.nonzero().flatten().tolist()[:5]]
            raise ValueError(f"{name} has images with NaN or inf values (items {items}): an "
                             "episode of them would give meaningless accuracies; clean them first")


@validated(same_length("support_x", "support_y"), same_length("query_x", "query_y"),
           divides("support_sets", "support_x", lambda s, n: f"support_sets={s} must divide "
                   f"the {n} support items"),
           support_x=Tensor(), query_x=Tensor(), support_y=Labels(), query_y=Labels(),
           support_sets=Int(1))
def episode_benchmark(
    support_x: torch.Tensor,
    support_y: torch.Tensor,
    query_x: torch.Tensor,
    query_y: torch.Tensor,
    support_sets: int,
) -> CLScenario:
    """An Avalanche benchmark for one episode.

    The support items are cut, in order, into ``support_sets`` equal consecutive
    parts, one training experience each; the queries form one test experience.
    Experiences carry ``classes_in_this_experience`` (Avalanche's classes timeline).

    Args:
        support_x: ``[M, ...]`` support inputs (images or features).
        support_y: ``[M]`` labels.
        query_x: ``[Q, ...]`` query inputs.
        query_y: ``[Q]`` labels.
        support_sets: number of training experiences; must divide ``M``.

    Raises:
        TypeError, ValueError: naming the argument, for non-tensor inputs, labels
            that are not integers >= 0, or lengths that do not match.
    """
    return _episode_benchmark(support_x, support_y, query_x, query_y, support_sets)


def _episode_benchmark(support_x: torch.Tensor, support_y: torch.Tensor, query_x: torch.Tensor,
                       query_y: torch.Tensor, support_sets: int) -> CLScenario:
    """:func:`episode_benchmark` of arguments that meet its rules (labels ``long``)."""
    size = len(support_x) // support_sets
    train = [
        _as_taskaware_supervised_classification_dataset(
            LabelledTensorDataset(support_x[k * size : (k + 1) * size],
                                  support_y[k * size : (k + 1) * size])
        )
        for k in range(support_sets)
    ]
    test = [_as_taskaware_supervised_classification_dataset(
        LabelledTensorDataset(query_x, query_y))]
    return with_classes_timeline(benchmark_from_datasets(train=train, test=test))


def _annotate(bm: CLScenario, **info) -> CLScenario:
    """Attach episode facts (plain ints/tensors) to the benchmark as attributes."""
    for key, value in info.items():
        setattr(bm, key, value)
    return bm


@validated(divides("support_sets", "images_per_episode", lambda s, n: f"support_sets={s} must "
                   f"divide images_per_episode={n} (each support set holds images_per_episode "
                   "/ support_sets images)"),
           n_episodes=Int(1), images_per_episode=Int(1), support_sets=Int(1), seed=Seed())
def instance_test_episodes(
    dataset: Dataset,
    n_episodes: int,
    images_per_episode: int = 20,
    support_sets: int = 4,
    corruption: str | None = None,
    severity: float = 0.0,
    seed: int = 0,
) -> Iterator[CLScenario]:
    """Episodes of the instance test of Kowadlo et al. (2022).

    Episode ``e`` draws one class uniformly among the classes with at least
    ``images_per_episode`` items, then ``N = images_per_episode`` distinct items
    of it without replacement, in random order. Image ``i`` gets label ``i``
    (its instance id). The train stream holds ``support_sets`` experiences of
    ``N / support_sets`` images each (labels ``0..N/S-1``, then the next ones...);
    the test stream holds one experience with the ``N`` queries: the same images
    with the same labels, in label order, copied exactly when
    ``corruption=None`` and else corrupted (queries only) by
    :func:`make_corruption` with a generator seeded from ``(seed, e)``.

    Each benchmark also carries ``episode_index``, ``source_class`` and
    ``source_indices`` (``[N]`` dataset indices, in label order).

    Args:
        dataset: any dataset of ``(image, label, ...)`` items with ``.targets``
            (Fashion-MNIST, digits, Omniglot...). Images ``[C, H, W]`` when a
            corruption is asked for; any tensors otherwise.
        n_episodes: number of episodes to yield.
        images_per_episode: ``N``, the number of instances (classes) per episode.
        support_sets: ``S``; must divide ``N``.
        corruption: None, "occlusion" (``severity`` = radius fraction ``r``) or
            "noise" (``severity`` = pixel fraction ``p``).
        severity: in [0, 1]; 0 when ``corruption`` is None.
        seed: an integer >= 0; episodes depend only on ``(seed, episode index)``.

    Raises:
        ValueError: on bad arguments, checked when called (not at the first episode).
    """
    n, s = images_per_episode, support_sets
    make_corruption(corruption, severity)  # validates both
    by_class = _indices_by_class(dataset)
    eligible = sorted(c for c, idx in by_class.items() if len(idx) >= n)
    if not eligible:
        largest = max((len(idx) for idx in by_class.values()), default=0)
        raise ValueError(
            f"images_per_episode={n} is more than any class has (the largest class "
            f"has {largest} items)"
        )

    def episodes() -> Iterator[CLScenario]:
        for e in range(n_episodes):
            rng = _episode_rng(seed, e, 0)
            cls = eligible[int(rng.integers(len(eligible)))]
            chosen = rng.choice(by_class[cls], size=n, replace=False)
            images = _stack_images(dataset, chosen)
            labels = torch.arange(n)
            queries = corrupt_images(
                images, corruption, severity, seed=_torch_seed(_episode_rng(seed, e, 1))
            )
            bm = _episode_benchmark(images, labels, queries, labels.clone(), s)
            yield _annotate(
                bm,
                episode_index=e,
                source_class=cls,
                source_indices=torch.as_tensor(chosen, dtype=torch.long),
            )

    return episodes()


@validated(divides("class_interval", "support_sets", lambda i, s: f"class_interval={i} must "
                   f"divide support_sets={s}"),
           Rule(lambda n_classes, support_sets, class_interval: n_classes % (
               support_sets // class_interval) == 0,
                lambda n_classes, support_sets, class_interval: "support_sets / class_interval "
                f"= {support_sets // class_interval} must divide n_classes={n_classes}"),
           n_episodes=Int(1), n_classes=Int(1), shots=Int(1), support_sets=Int(1),
           query_shots=Int(1, optional=True), seed=Seed(), class_interval=Int(1))
def cfsl_episodes(
    dataset: Dataset,
    n_episodes: int,
    n_classes: int,
    shots: int,
    support_sets: int,
    query_shots: int | None = None,
    corruption: str | None = None,
    severity: float = 0.0,
    seed: int = 0,
    class_interval: int = 1,
) -> Iterator[CLScenario]:
    """Class-level CFSL episodes with many classes (Kowadlo et al., 2022; Antoniou et al., 2020).

    Episode ``e`` draws ``n_classes`` distinct classes in random order and labels
    them ``0..n_classes-1`` in that order. The ``support_sets`` sets come in
    groups of ``class_interval`` consecutive sets that show the same
    ``n_classes * class_interval / support_sets`` classes (the next ones in label
    order), each with ``shots`` NEW images in every set: each class is shown in
    exactly ``class_interval`` consecutive support sets, ``shots *
    class_interval`` distinct support images in all (the authors' *class-change
    interval*; 1 shows each class once). The test stream holds one experience
    with ``query_shots`` other images of every class, optionally corrupted like
    :func:`instance_test_episodes`.

    Each benchmark also carries ``episode_index``, ``source_classes`` (original
    class of label ``k``), ``support_indices`` (in presentation order) and
    ``query_indices``.

    Args:
        dataset: any dataset with ``.targets``.
        n_episodes: number of episodes.
        n_classes: classes per episode (the N-way of the task).
        shots: support images per class and support set.
        support_sets: number of support sets; a multiple of ``class_interval``
            whose quotient divides ``n_classes``.
        query_shots: query images per class (default: ``shots``).
        corruption, severity, seed: as for :func:`instance_test_episodes`.
        class_interval: consecutive support sets that show each class, >= 1.
    """
    s, interval = support_sets, class_interval
    query_shots = shots if query_shots is None else query_shots
    groups = s // interval
    per_group = n_classes // groups
    make_corruption(corruption, severity)
    by_class = _indices_by_class(dataset)
    need = shots * interval + query_shots
    eligible = sorted(c for c, idx in by_class.items() if len(idx) >= need)
    if len(eligible) < n_classes:
        raise ValueError(
            f"n_classes={n_classes} is more than the {len(eligible)} classes with at "
            f"least shots * class_interval + query_shots = {need} items"
        )

    def episodes() -> Iterator[CLScenario]:
        for e in range(n_episodes):
            rng = _episode_rng(seed, e, 0)
            classes = rng.choice(eligible, size=n_classes, replace=False)
            picked = [rng.choice(by_class[int(c)], size=need, replace=False) for c in classes]
            support_idx, support_y = [], []
            for g in range(groups):  # sets g*interval .. (g+1)*interval-1
                for r in range(interval):
                    for k in range(g * per_group, (g + 1) * per_group):
                        support_idx.append(picked[k][r * shots : (r + 1) * shots])
                        support_y += [k] * shots
            query_idx = np.concatenate([p[shots * interval :] for p in picked])
            support_idx = np.concatenate(support_idx)
            query_y = torch.arange(n_classes).repeat_interleave(query_shots)
            queries = corrupt_images(
                _stack_images(dataset, query_idx), corruption, severity,
                seed=_torch_seed(_episode_rng(seed, e, 1)),
            )
            bm = _episode_benchmark(
                _stack_images(dataset, support_idx), torch.tensor(support_y), queries,
                query_y, s,
            )
            yield _annotate(
                bm,
                episode_index=e,
                source_classes=torch.as_tensor(classes, dtype=torch.long),
                support_indices=torch.as_tensor(support_idx, dtype=torch.long),
                query_indices=torch.as_tensor(query_idx, dtype=torch.long),
            )

    return episodes()
