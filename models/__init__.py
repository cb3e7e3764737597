"""nn.Modules of neve: pretrained backbones and heads, and the math under them."""

import warnings

from .analytic import AnalyticClassifier, BufferLayer
from .backbones import (
    Backbone,
    ImagePreprocess,
    WeightsUnavailableError,
    pretrained_backbone,
)
from .classifier import PretrainedClassifier, model_part
from .convnet_training import meta_train_protonet, pretrain_convnet
from .convnets import ConvNet, TunedNetwork
from .features import (
    dataset_fingerprint,
    default_cache_dir,
    encode,
    extract_features,
    iter_features,
)
from .incremental_ridge import IncrementalRidge
from .prototypes import DotProductNCM

__all__ = [
    "AnalyticClassifier",
    "ConvNet",
    "DotProductNCM",
    "TunedNetwork",
    "meta_train_protonet",
    "pretrain_convnet",
    "BufferLayer",
    "IncrementalRidge",
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


def __getattr__(name: str):
    if name == "RecursiveLeastSquares":  # its old name
        warnings.warn("neve.models.RecursiveLeastSquares is deprecated; use "
                      "neve.models.IncrementalRidge (the same class)", DeprecationWarning,
                      stacklevel=2)
        return IncrementalRidge
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
