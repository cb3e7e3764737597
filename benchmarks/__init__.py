"""Streams, class orders and offline datasets for Avalanche benchmarks."""

from neve.benchmarks.datasets import (
    IndexedSubset,
    LabelledTensorDataset,
    class_balanced_subset,
    default_cache_dir,
    digits,
    fashion_mnist,
)
from neve.benchmarks.episodes import (
    EpisodeResults,
    encode_episode,
    encode_episodes,
    mean_confidence_interval,
    paired_conditions,
    run_episodes,
)
from neve.benchmarks.instance import (
    Occlusion,
    PixelNoise,
    cfsl_episodes,
    disc_mask,
    episode_benchmark,
    instance_test_episodes,
    make_corruption,
    occlusion_radius,
)

__all__ = [
    "EpisodeResults",
    "Occlusion",
    "PixelNoise",
    "cfsl_episodes",
    "disc_mask",
    "encode_episode",
    "encode_episodes",
    "episode_benchmark",
    "instance_test_episodes",
    "make_corruption",
    "mean_confidence_interval",
    "occlusion_radius",
    "paired_conditions",
    "run_episodes",
    "IndexedSubset",
    "LabelledTensorDataset",
    "class_balanced_subset",
    "default_cache_dir",
    "digits",
    "fashion_mnist",
]
