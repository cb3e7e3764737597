"""Small VGG-style conv nets of the instance test's learners (Kowadlo et al., 2022).

The authors' Pretrain+Tune learner is a 3-stage VGG-style net and their ProtoNet
a 4-stage one, on 28x28 grey images. A *stage* is a 3x3 convolution (padding 1),
BatchNorm, ReLU and a 2x2 max-pool; the output is the flattened last stage.
28x28 inputs give ``filters x 3 x 3`` features after 3 stages and ``filters x 1 x
1`` after 4.

* :class:`ConvNet` -- the body (an encoder); ``transform`` is the identity, so
  :class:`neve.benchmarks.BackboneFeatures` and :func:`neve.models.encode` take it
  like any backbone.
* :class:`TunedNetwork` -- a body plus a linear head, for end-to-end tuning; with
  ``freeze_norm_stats`` the BatchNorm layers keep their pretrained running
  statistics in training mode (a support set may hold a single image).

Training them (supervised pretraining, ProtoNet meta-training, on-disk cache):
:mod:`neve.models.convnet_training`.
"""

from __future__ import annotations

import torch
from torch import nn

from .core.checks import Bool, Instance, Int, Seed, check_int, validated


class ConvNet(nn.Module):
    """VGG-style encoder: ``stages`` x (conv3x3 -> BatchNorm -> ReLU -> maxpool 2), flattened.

    Args:
        stages: number of stages (the authors: 3 for Pretrain+Tune, 4 for ProtoNets).
        filters: channels of every convolution.
        in_channels: channels of the input images (1 for grey).
        input_size: height = width of the inputs; fixes :attr:`feature_dim`.

    Input ``[B, in_channels, input_size, input_size]``; output ``[B, feature_dim]``.
    """

    @validated(stages=Int(1), filters=Int(1), in_channels=Int(1), input_size=Int(1))
    def __init__(
        self, stages: int = 3, filters: int = 32, in_channels: int = 1, input_size: int = 28
    ) -> None:
        super().__init__()
        self.stages, self.filters = stages, filters
        self.in_channels, self.input_size = in_channels, input_size
        side = self.input_size
        layers: list[nn.Module] = []
        channels = self.in_channels
        for _ in range(self.stages):
            if side < 2:
                raise ValueError(
                    f"stages={stages} halve input_size={input_size} below 1 pixel; "
                    "use fewer stages or larger inputs"
                )
            layers += [
                nn.Conv2d(channels, self.filters, 3, padding=1),
                nn.BatchNorm2d(self.filters),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            ]
            channels = self.filters
            side //= 2
        self.layers = nn.Sequential(*layers, nn.Flatten())
        self.feature_dim = self.filters * side * side

    @staticmethod
    def transform(x: torch.Tensor) -> torch.Tensor:
        """The identity: the net takes the ``[0, 1]`` images as they are."""
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)

    def config(self) -> dict:
        """The constructor's arguments (to rebuild the net before loading weights)."""
        return {"stages": self.stages, "filters": self.filters,
                "in_channels": self.in_channels, "input_size": self.input_size}


class TunedNetwork(nn.Module):
    """``head(body(x))``: a (pretrained) body with a linear head, all layers trainable.

    Args:
        body: the encoder, e.g. a :class:`ConvNet`; its ``feature_dim`` attribute
            (or ``feature_dim``) gives the head's input size.
        num_classes: outputs of the head.
        feature_dim: the body's output size (default: ``body.feature_dim``).
        freeze_norm_stats: in training mode, keep every BatchNorm layer in eval
            mode (pretrained running statistics, no batch statistics); its affine
            parameters still train.
        head_seed: seeds the head's initialisation (PyTorch's ``nn.Linear``
            default, uniform in ``+-1/sqrt(feature_dim)``), so a fresh head is the
            same on every call with the same seed.
    """

    @validated(body=Instance(nn.Module, what="an nn.Module"), num_classes=Int(1),
               feature_dim=Int(1, optional=True), freeze_norm_stats=Bool(), head_seed=Seed())
    def __init__(
        self,
        body: nn.Module,
        num_classes: int,
        feature_dim: int | None = None,
        *,
        freeze_norm_stats: bool = True,
        head_seed: int = 0,
    ) -> None:
        super().__init__()
        if feature_dim is None:
            feature_dim = getattr(body, "feature_dim", None)
            if feature_dim is None:
                raise ValueError("feature_dim must be given when body has no .feature_dim")
            feature_dim = check_int(feature_dim, "body.feature_dim", minimum=1)
        self.freeze_norm_stats = freeze_norm_stats
        self.body = body
        self.head = nn.Linear(feature_dim, num_classes)
        bound = 1.0 / feature_dim**0.5
        gen = torch.Generator().manual_seed(head_seed)
        with torch.no_grad():
            self.head.weight.copy_(torch.rand(self.head.weight.shape, generator=gen) * 2 * bound
                                   - bound)
            self.head.bias.copy_(torch.rand(self.head.bias.shape, generator=gen) * 2 * bound
                                 - bound)
        self.train(self.training)

    def train(self, mode: bool = True) -> TunedNetwork:
        super().train(mode)
        if mode and self.freeze_norm_stats:
            for module in self.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))
