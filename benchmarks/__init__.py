"""Streams, class orders and offline datasets for Avalanche benchmarks."""

from neve.benchmarks.datasets import (
    IndexedSubset,
    LabelledTensorDataset,
    class_balanced_subset,
    default_cache_dir,
    digits,
    fashion_mnist,
)

__all__ = [
    "IndexedSubset",
    "LabelledTensorDataset",
    "class_balanced_subset",
    "default_cache_dir",
    "digits",
    "fashion_mnist",
]
