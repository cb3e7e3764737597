"""nn.Modules of neve: pretrained backbones and heads."""

from neve.models.analytic import (
    AnalyticClassifier,
    BufferLayer,
    RecursiveLeastSquares,
)
from neve.models.backbones import (
    Backbone,
    ImagePreprocess,
    dataset_fingerprint,
    extract_features,
    pretrained_backbone,
)
from neve.models.classifier import PretrainedClassifier

__all__ = [
    "AnalyticClassifier",
    "BufferLayer",
    "RecursiveLeastSquares",
    "Backbone",
    "ImagePreprocess",
    "PretrainedClassifier",
    "dataset_fingerprint",
    "extract_features",
    "pretrained_backbone",
]
