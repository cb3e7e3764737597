"""nn.Modules of neve: pretrained backbones and heads."""

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
from .prototypes import DotProductNCM
from .recursive_least_squares import RecursiveLeastSquares

__all__ = [
    "AnalyticClassifier",
    "ConvNet",
    "DotProductNCM",
    "TunedNetwork",
    "meta_train_protonet",
    "pretrain_convnet",
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
