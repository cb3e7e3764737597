"""nn.Modules of neve: pretrained backbones and heads."""

from neve.models.backbones import (
    Backbone,
    ImagePreprocess,
    dataset_fingerprint,
    extract_features,
    pretrained_backbone,
)

__all__ = [
    "Backbone",
    "ImagePreprocess",
    "dataset_fingerprint",
    "extract_features",
    "pretrained_backbone",
]
