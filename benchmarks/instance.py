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

The corruptions are transforms usable on their own: :class:`Occlusion` and
:class:`PixelNoise`.
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

from neve.benchmarks.datasets import LabelledTensorDataset

CORRUPTIONS = ("occlusion", "noise")


# --------------------------------------------------------------------------- corruptions


def occlusion_radius(radius_fraction: float, height: int) -> int:
    """Disc radius in pixels: ``floor(radius_fraction * height)`` (the authors' rounding)."""
    return int(radius_fraction * height)


def disc_mask(height: int, width: int, radius: int, row: int, col: int) -> torch.Tensor:
    """Boolean ``[height, width]`` mask of the pixels within ``radius`` of ``(row, col)``.

    A pixel ``(i, j)`` is inside when ``(i - row)^2 + (j - col)^2 <= radius^2``.
    """
    i = torch.arange(height).unsqueeze(1)
    j = torch.arange(width).unsqueeze(0)
    return (i - row) ** 2 + (j - col) ** 2 <= radius**2


def _check_fraction(name: str, value: float) -> float:
    value = float(value)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value!r}")
    return value


def _check_images(x: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() not in (3, 4):
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"image must be a tensor [C, H, W] or [B, C, H, W], got {shape}")


def _make_generator(seed: int | None, generator: torch.Generator | None):
    if seed is not None and generator is not None:
        raise ValueError("give seed or generator, not both")
    if seed is not None:
        return torch.Generator().manual_seed(int(seed))
    return generator


class Occlusion:
    """Zero-fills a disc of radius ``floor(radius_fraction * H)`` pixels at a random place.

    Kowadlo et al. (2022), instance test, occlusion with ``r`` in {0.05, 0.1, 0.2,
    0.3}. As in the authors' code (Cerenaut/cfsl), the centre is drawn uniformly
    among integer positions ``row in [r, H - r)``, ``col in [r, W - r)``, so the
    disc lies inside the image, and every channel of the covered pixels is set
    to 0. Each image of a batch gets its own centre. A radius of 0 pixels leaves
    the image unchanged.

    Args:
        radius_fraction: disc radius as a fraction of the image height, in [0, 1].
        seed: seeds a private generator, so a sequence of calls repeats exactly.
        generator: a ``torch.Generator`` to draw the centres from instead
            (default: torch's global generator when neither is given).

    Call it on ``[C, H, W]`` or ``[B, C, H, W]``; it returns a new tensor.
    """

    def __init__(
        self,
        radius_fraction: float,
        seed: int | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        self.radius_fraction = _check_fraction("radius_fraction", radius_fraction)
        self.generator = _make_generator(seed, generator)

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        _check_images(image)
        batch = image if image.dim() == 4 else image.unsqueeze(0)
        height, width = batch.shape[-2:]
        radius = occlusion_radius(self.radius_fraction, height)
        out = batch.clone()
        if radius == 0:
            return out if image.dim() == 4 else out[0]
        for b in range(out.shape[0]):
            row = _uniform_int(radius, height - radius, height, self.generator)
            col = _uniform_int(radius, width - radius, width, self.generator)
            out[b][:, disc_mask(height, width, radius, row, col)] = 0
        return out if image.dim() == 4 else out[0]

    def __repr__(self) -> str:
        return f"Occlusion(radius_fraction={self.radius_fraction})"


def _uniform_int(low: int, high: int, size: int, generator: torch.Generator | None) -> int:
    """Integer uniform in ``[low, high)``; the middle pixel when that range is empty."""
    if high <= low:
        return size // 2
    return int(torch.randint(low, high, (1,), generator=generator))


class PixelNoise:
    """Replaces ``floor(fraction * H * W)`` pixels, chosen without replacement, by U(0, 1) noise.

    Kowadlo et al. (2022), instance test, noise with ``p`` in {0.05, 0.1, 0.2,
    0.4}. A *pixel* is a spatial position: all channels of a chosen pixel are
    replaced together, each channel by its own U(0, 1) draw. (The authors' code
    picks positions over all channel values independently; for 1-channel
    images, like Omniglot and Fashion-MNIST, the two are the same.) Each image
    of a batch gets its own positions and values.

    Args:
        fraction: share of the pixels replaced, in [0, 1].
        seed: seeds a private generator, so a sequence of calls repeats exactly.
        generator: a ``torch.Generator`` to draw from instead.

    Call it on ``[C, H, W]`` or ``[B, C, H, W]`` images in [0, 1]; it returns a new tensor.
    """

    def __init__(
        self,
        fraction: float,
        seed: int | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        self.fraction = _check_fraction("fraction", fraction)
        self.generator = _make_generator(seed, generator)

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        _check_images(image)
        batch = image if image.dim() == 4 else image.unsqueeze(0)
        channels, height, width = batch.shape[1:]
        n_pixels = int(self.fraction * height * width)
        out = batch.clone()
        for b in range(out.shape[0]):
            where = torch.randperm(height * width, generator=self.generator)[:n_pixels]
            noise = torch.rand(channels, n_pixels, generator=self.generator)
            flat = out[b].reshape(channels, height * width)  # a view of out[b]
            flat[:, where] = noise.to(dtype=out.dtype, device=out.device)
        return out if image.dim() == 4 else out[0]

    def __repr__(self) -> str:
        return f"PixelNoise(fraction={self.fraction})"


def make_corruption(corruption: str | None, severity: float, seed: int | None = None):
    """The transform named ``corruption`` ("occlusion", "noise" or None) at ``severity``.

    ``severity`` is the radius fraction ``r`` for occlusion and the pixel fraction
    ``p`` for noise. Returns None for ``corruption=None``.
    """
    severity = _check_fraction("severity", severity)
    if corruption is None:
        return None
    if corruption == "occlusion":
        return Occlusion(severity, seed=seed)
    if corruption == "noise":
        return PixelNoise(severity, seed=seed)
    raise ValueError(f"corruption must be None or one of {CORRUPTIONS}, got {corruption!r}")


# --------------------------------------------------------------------------- episodes


def _episode_rng(seed: int, episode: int, stream: int) -> np.random.Generator:
    """Independent generator for one episode; ``stream`` 0 draws images, 1 corrupts."""
    return np.random.default_rng([int(seed), int(episode), int(stream)])


def _torch_seed(rng: np.random.Generator) -> int:
    return int(rng.integers(0, 2**62))


def _indices_by_class(dataset: Dataset) -> dict[int, np.ndarray]:
    if not hasattr(dataset, "targets"):
        raise ValueError("dataset must have .targets (the label of every item)")
    targets = np.asarray(torch.as_tensor(dataset.targets))
    if targets.ndim != 1 or len(targets) != len(dataset):
        raise ValueError(
            f"dataset.targets must hold one label per item, got shape {targets.shape} "
            f"for {len(dataset)} items"
        )
    return {int(c): np.flatnonzero(targets == c) for c in np.unique(targets)}


def _positive_int(name: str, value: int) -> int:
    if isinstance(value, bool) or int(value) != value or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _stack_images(dataset: Dataset, indices: Sequence[int]) -> torch.Tensor:
    return torch.stack([torch.as_tensor(dataset[int(i)][0]) for i in indices])


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
    """
    if len(support_x) % support_sets:
        raise ValueError(
            f"support_sets={support_sets} must divide the {len(support_x)} support items"
        )
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
        severity: in [0, 1].
        seed: episodes depend only on ``(seed, episode index)``.

    Raises:
        ValueError: on bad arguments, checked when called (not at the first episode).
    """
    n_episodes = _positive_int("n_episodes", n_episodes)
    n = _positive_int("images_per_episode", images_per_episode)
    s = _positive_int("support_sets", support_sets)
    if n % s:
        raise ValueError(
            f"support_sets={s} must divide images_per_episode={n} "
            f"(each support set holds images_per_episode / support_sets images)"
        )
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
            queries = images.clone()
            transform = make_corruption(
                corruption, severity, seed=_torch_seed(_episode_rng(seed, e, 1))
            )
            if transform is not None:
                _check_images(queries[0])
                queries = transform(queries)
            bm = episode_benchmark(images, labels, queries, labels.clone(), s)
            yield _annotate(
                bm,
                episode_index=e,
                source_class=cls,
                source_indices=torch.as_tensor(chosen, dtype=torch.long),
            )

    return episodes()


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
) -> Iterator[CLScenario]:
    """Class-level CFSL episodes with many classes (Kowadlo et al., 2022; Antoniou et al., 2020).

    Episode ``e`` draws ``n_classes`` distinct classes (each with at least
    ``shots + query_shots`` items) in random order and labels them ``0..n_classes-1``
    in that order. Per class it draws ``shots`` support and ``query_shots`` query
    items, all distinct. The train stream holds ``support_sets`` experiences, each
    with ``n_classes / support_sets`` new classes (``shots`` images each); the
    test stream holds one experience with all queries (other images of the same
    classes), optionally corrupted like :func:`instance_test_episodes`.

    Each benchmark also carries ``episode_index``, ``source_classes`` (original
    class of label ``k``), ``support_indices`` and ``query_indices``.

    Args:
        dataset: any dataset with ``.targets``.
        n_episodes: number of episodes.
        n_classes: classes per episode (the N-way of the task).
        shots: support images per class.
        support_sets: number of support sets; must divide ``n_classes``.
        query_shots: query images per class (default: ``shots``).
        corruption, severity, seed: as for :func:`instance_test_episodes`.
    """
    n_episodes = _positive_int("n_episodes", n_episodes)
    n_classes = _positive_int("n_classes", n_classes)
    shots = _positive_int("shots", shots)
    s = _positive_int("support_sets", support_sets)
    query_shots = shots if query_shots is None else _positive_int("query_shots", query_shots)
    if n_classes % s:
        raise ValueError(f"support_sets={s} must divide n_classes={n_classes}")
    make_corruption(corruption, severity)
    by_class = _indices_by_class(dataset)
    need = shots + query_shots
    eligible = sorted(c for c, idx in by_class.items() if len(idx) >= need)
    if len(eligible) < n_classes:
        raise ValueError(
            f"n_classes={n_classes} is more than the {len(eligible)} classes with at "
            f"least shots + query_shots = {need} items"
        )

    def episodes() -> Iterator[CLScenario]:
        for e in range(n_episodes):
            rng = _episode_rng(seed, e, 0)
            classes = rng.choice(eligible, size=n_classes, replace=False)
            support_idx, query_idx = [], []
            for c in classes:
                picked = rng.choice(by_class[int(c)], size=need, replace=False)
                support_idx.append(picked[:shots])
                query_idx.append(picked[shots:])
            support_idx = np.concatenate(support_idx)
            query_idx = np.concatenate(query_idx)
            support_y = torch.arange(n_classes).repeat_interleave(shots)
            query_y = torch.arange(n_classes).repeat_interleave(query_shots)
            queries = _stack_images(dataset, query_idx)
            transform = make_corruption(
                corruption, severity, seed=_torch_seed(_episode_rng(seed, e, 1))
            )
            if transform is not None:
                _check_images(queries[0])
                queries = transform(queries)
            bm = episode_benchmark(
                _stack_images(dataset, support_idx), support_y, queries, query_y, s
            )
            yield _annotate(
                bm,
                episode_index=e,
                source_classes=torch.as_tensor(classes, dtype=torch.long),
                support_indices=torch.as_tensor(support_idx, dtype=torch.long),
                query_indices=torch.as_tensor(query_idx, dtype=torch.long),
            )

    return episodes()
