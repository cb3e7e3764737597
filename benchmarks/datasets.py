"""Offline datasets that Avalanche's benchmark builders accept as they are.

* :func:`fashion_mnist` -- the full Fashion-MNIST (60,000 train / 10,000 test,
  10 classes), found offline in Debian's ``dataset-fashion-mnist`` package.
* :func:`digits` -- scikit-learn's bundled 8x8 digits (1,797 images), for fast
  tests.

Both return ``(train, test)`` datasets whose items are ``(image, label)`` with
``image`` a float tensor of shape ``[1, H, W]`` in ``[0, 1]`` and whose
``.targets`` hold the labels, so ``nc_benchmark`` and
``class_incremental_benchmark`` take them directly.
"""

from __future__ import annotations

import gzip
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision import transforms
from torchvision.datasets import FashionMNIST

from ..models.core.checks import (
    Bool,
    Function,
    Instance,
    Int,
    Real,
    Seed,
    check_int,
    same_length,
    validated,
)
from ..models.core.data_checks import Labels, Tensor, check_labelled, check_labels
from ..models.features import default_cache_dir

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
_FMNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


class LabelledTensorDataset(Dataset):
    """Inputs (images or features) held in one tensor, with ``.targets``, as Avalanche expects.

    Args:
        data: float tensor ``[N, ...]`` (images ``[N, C, H, W]`` or features ``[N, D]``).
        targets: ``[N]`` labels of an integer dtype, >= 0 (stored as int64); float
            labels are refused, whole or not (neve's one label rule,
            :func:`~neve.models.core.data_checks.check_labels`).
    """

    @validated(same_length("data", "targets"), data=Tensor(), targets=Labels())
    def __init__(self, data: torch.Tensor, targets: torch.Tensor) -> None:
        self.data = data
        self.targets = targets

    def __len__(self) -> int:
        return self.data.shape[0]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.data[index], int(self.targets[index])


def _has_raw_fashion_mnist(root: Path) -> bool:
    raw = root / "FashionMNIST" / "raw"
    return all((raw / name).is_file() for name in _FMNIST_FILES)


def _unpack_debian_fashion_mnist(source: Path, root: Path) -> None:
    """Gunzip the four IDX files into ``root/FashionMNIST/raw`` (torchvision's layout)."""
    raw = root / "FashionMNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for name in _FMNIST_FILES:
        target = raw / name
        if target.is_file():
            continue
        partial = raw / (name + ".partial")
        with gzip.open(source / (name + ".gz"), "rb") as fin, open(partial, "wb") as fout:
            shutil.copyfileobj(fin, fout)
        partial.replace(target)


@validated(root=Instance(str, os.PathLike, what="a folder path", optional=True),
           download=Bool(), transform=Function(optional=True))
def fashion_mnist(
    root: str | os.PathLike | None = None,
    download: bool = False,
    transform: Callable | None = None,
) -> tuple[FashionMNIST, FashionMNIST]:
    """Fashion-MNIST as torchvision datasets ``(train, test)``.

    The data is looked for in this order:

    1. an explicit ``root`` holding torchvision's ``FashionMNIST/raw`` files;
    2. Debian's package ``dataset-fashion-mnist`` (IDX ``.gz`` files under
       ``/usr/share/datasets/fashion-mnist``), unpacked once into
       ``default_cache_dir()/data``;
    3. torchvision's download, only when ``download=True``.

    Args:
        root: folder with ``FashionMNIST/raw``; also where a download goes.
        download: allow torchvision to download the data when it is not found.
        transform: image transform; default ``ToTensor()`` (``[1, 28, 28]`` floats in [0, 1]).

    Returns:
        ``(train, test)``: 60,000 and 10,000 images with ``.targets``.

    Raises:
        FileNotFoundError: naming the three ways to get the data.
    """
    transform = transforms.ToTensor() if transform is None else transform
    if root is not None and _has_raw_fashion_mnist(Path(root)):
        found = Path(root)
    elif (DEBIAN_FASHION_MNIST / "train-images-idx3-ubyte.gz").is_file():
        found = default_cache_dir() / "data"
        _unpack_debian_fashion_mnist(DEBIAN_FASHION_MNIST, found)
    elif download:
        found = Path(root) if root is not None else default_cache_dir() / "data"
    else:
        where = f"root={str(root)!r} has no FashionMNIST/raw files; " if root else ""
        raise FileNotFoundError(
            f"Fashion-MNIST not found ({where}no Debian package data under "
            f"{DEBIAN_FASHION_MNIST}). Get it one of three ways: "
            "(1) pass root=<folder with FashionMNIST/raw/*-ubyte files>; "
            "(2) install Debian's package: apt-get install dataset-fashion-mnist; "
            "(3) call fashion_mnist(download=True) where the internet is reachable."
        )
    train = FashionMNIST(str(found), train=True, download=download, transform=transform)
    test = FashionMNIST(str(found), train=False, download=download, transform=transform)
    return train, test


@validated(test_fraction=Real(gt=0.0, lt=1.0), seed=Seed())
def digits(
    test_fraction: float = 0.25, seed: int = 0
) -> tuple[LabelledTensorDataset, LabelledTensorDataset]:
    """scikit-learn's 8x8 digits as ``(train, test)`` datasets of ``[1, 8, 8]`` floats.

    The split is stratified by class and depends only on ``seed``: the same
    seed gives the same split on every machine.

    Args:
        test_fraction: share of each class put in the test set, in (0, 1).
        seed: seed of the split, an integer >= 0.
    """
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0
    labels = torch.tensor(bunch.target, dtype=torch.long)
    rng = np.random.default_rng(seed)
    test_mask = np.zeros(len(labels), dtype=bool)
    for c in np.unique(bunch.target):
        idx = np.flatnonzero(bunch.target == c)
        n_test = int(round(test_fraction * len(idx)))
        test_mask[rng.permutation(idx)[:n_test]] = True
    test_idx = torch.from_numpy(np.flatnonzero(test_mask))
    train_idx = torch.from_numpy(np.flatnonzero(~test_mask))
    return (
        LabelledTensorDataset(images[train_idx], labels[train_idx]),
        LabelledTensorDataset(images[test_idx], labels[test_idx]),
    )


@validated(per_class=Int(1, optional=True), seed=Seed())
def balanced_indices(
    targets: torch.Tensor,
    per_class: int | None,
    classes: list[int] | None = None,
    seed: int = 0,
) -> torch.Tensor:
    """Sorted indices of up to ``per_class`` items of each class, after a seeded shuffle.

    Args:
        targets: ``[N]`` integer labels.
        per_class: items kept per class (all of a smaller class); None keeps all.
        classes: the classes to keep (default: every class in ``targets``).
        seed: seed of the shuffle, an integer >= 0.

    Raises:
        TypeError, ValueError: naming the argument; ``classes`` must all occur in ``targets``.
    """
    return _balanced_indices(check_labels(targets, "targets"), per_class, classes, seed)


def _balanced_indices(targets: torch.Tensor, per_class: int | None, classes: list[int] | None,
                      seed: int) -> torch.Tensor:
    """:func:`balanced_indices` of checked ``targets``, ``per_class`` and ``seed``."""
    present = torch.unique(targets).tolist()
    if classes is None:
        classes = present
    else:
        classes = [check_int(c, "classes", minimum=0) for c in classes]
        missing = sorted(set(classes) - set(present))
        if missing:
            raise ValueError(f"classes {missing} do not occur in targets")
    gen = torch.Generator().manual_seed(int(seed))
    order = torch.randperm(len(targets), generator=gen)
    keep = [order[targets[order] == c] for c in classes]
    if per_class is not None:
        keep = [idx[: int(per_class)] for idx in keep]
    return torch.sort(torch.cat(keep)).values


@validated(per_class=Int(1), seed=Seed())
def class_balanced_subset(dataset: Dataset, per_class: int, seed: int = 0) -> Dataset:
    """The first ``per_class`` items of each class after a seeded shuffle.

    Keeps ``.targets`` so Avalanche's builders accept the result.

    Args:
        dataset: a dataset with ``.targets``.
        per_class: items kept per class (all of a smaller class).
        seed: seed of the shuffle, an integer >= 0.
    """
    targets = check_labelled(dataset, "dataset")
    return IndexedSubset(dataset, _balanced_indices(targets, per_class, None, seed))


class IndexedSubset(Dataset):
    """``torch.utils.data.Subset`` that also carries ``.targets``."""

    def __init__(self, dataset: Dataset, indices: torch.Tensor) -> None:
        self.dataset = dataset
        self.indices = torch.as_tensor(indices, dtype=torch.long)
        self.targets = torch.as_tensor(dataset.targets)[self.indices]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int):
        return self.dataset[int(self.indices[index])]
