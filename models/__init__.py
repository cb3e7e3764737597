"""nn.Modules of neve: pretrained backbones and heads."""

from .analytic import AnalyticClassifier, BufferLayer
from .backbones import (
    Backbone,
    ImagePreprocess,
    WeightsUnavailableError,
    pretrained_backbone,
)
from .classifier import PretrainedClassifier, model_part
from .features import (
    dataset_fingerprint,
    default_cache_dir,
    encode,
    extract_features,
    iter_features,
)
from .recursive_least_squares import RecursiveLeastSquares

__all__ = [
    "AnalyticClassifier",
    "BufferLayer",
    "RecursiveLeastSquares",
    "Backbone",
    "ImagePreprocess",
    "PretrainedClassifier",
    "dataset_fingerprint",
    "default_cache_dir",
    "encode",
    "iter_features",
    "model_part",
    "extract_features",
    "pretrained_backbone",
    "WeightsUnavailableError",
]
