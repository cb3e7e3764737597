"""Streams, class orders and offline datasets for Avalanche benchmarks."""

from .cfsl import fashion_and_digits
from .corruptions import (
    Occlusion,
    PixelNoise,
    disc_mask,
    make_corruption,
    occlusion_radius,
)
from .curriculum import curriculum_benchmark, select_classes
from .curriculum_designer import CurriculumDesigner
from .curriculum_score import curriculum_score, score_orders
from .datasets import (
    IndexedSubset,
    LabelledTensorDataset,
    class_balanced_subset,
    default_cache_dir,
    digits,
    fashion_mnist,
)
from .episode_features import BackboneFeatures, encode_episode, encode_episodes
from .episodes import (
    EpisodeResults,
    mean_confidence_interval,
    paired_conditions,
    run_episodes,
)
from .instance import cfsl_episodes, episode_benchmark, instance_test_episodes
from .online import BoundaryAwareOnlineExperience, split_online
from .si_blurry import si_blurry_benchmark, si_blurry_split

__all__ = [
    "si_blurry_benchmark",
    "si_blurry_split",
    "BoundaryAwareOnlineExperience",
    "CurriculumDesigner",
    "curriculum_benchmark",
    "curriculum_score",
    "score_orders",
    "select_classes",
    "split_online",
    "BackboneFeatures",
    "EpisodeResults",
    "Occlusion",
    "PixelNoise",
    "cfsl_episodes",
    "fashion_and_digits",
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
