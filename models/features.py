"""The one frozen-feature pass of neve.

Every component that needs features of a frozen network (the Curriculum
Designer's teacher, SLCA's class statistics, the analytic head, the instance-test
encoders, the feature caches of the examples) goes through :func:`iter_features`:
eval mode (restored afterwards), no gradients, batches, a device, image batches in
``channels_last`` memory format, a progress bar on a terminal only, and an
optional disk cache keyed by the network's weights and the dataset's content.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.std import tqdm

from .core.checks import check_labels

Encoder = Callable[[torch.Tensor], torch.Tensor]


def default_cache_dir() -> Path:
    """Where neve keeps unpacked data and feature caches.

    ``$NEVE_CACHE`` if set, else ``~/.cache/neve``.
    """
    return Path(os.environ.get("NEVE_CACHE", Path.home() / ".cache" / "neve"))


def dataset_fingerprint(dataset: Dataset) -> str:
    """A short hash that changes when the dataset's images, labels or transform change.

    Uses the whole ``.data`` array when the dataset has one (torchvision's MNIST
    family, :class:`~neve.benchmarks.LabelledTensorDataset`); otherwise a
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


def module_fingerprint(module: nn.Module) -> str:
    """A short hash of a module's parameters and buffers (names, shapes and values)."""
    h = hashlib.sha1()
    for name, tensor in module.state_dict().items():
        h.update(name.encode())
        if isinstance(tensor, torch.Tensor):
            t = tensor.detach().cpu().contiguous()
            h.update(str((tuple(t.shape), t.dtype)).encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def _encoder_device(encoder: Encoder) -> torch.device:
    if isinstance(encoder, nn.Module):
        for p in encoder.parameters():
            return p.device
    return torch.device("cpu")


def _on_device(encoder: Encoder, device: str | torch.device | None) -> torch.device:
    """The device of the pass; a module encoder is moved there when one is named."""
    if device is None:
        return _encoder_device(encoder)
    device = torch.device(device)
    if isinstance(encoder, nn.Module):
        encoder.to(device)
    return device


def _encode(encoder: Encoder, x: torch.Tensor, preprocess: Encoder | None) -> torch.Tensor:
    if preprocess is not None:
        x = preprocess(x)
    if x.dim() == 4:
        # same numbers (to float rounding); faster convolutions on CPU
        x = x.contiguous(memory_format=torch.channels_last)
    out = encoder(x)
    if not isinstance(out, torch.Tensor):
        raise ValueError(f"the encoder must return a tensor, got {type(out).__name__}")
    return out.flatten(1) if out.dim() > 2 else out


class _EvalMode:
    """Puts a module in eval mode and restores each submodule's mode afterwards."""

    def __init__(self, encoder: Encoder) -> None:
        self.module = encoder if isinstance(encoder, nn.Module) else None

    def __enter__(self) -> None:
        if self.module is not None:
            self.modes = [(m, m.training) for m in self.module.modules()]
            self.module.eval()

    def __exit__(self, *exc) -> None:
        if self.module is not None:
            for m, mode in self.modes:
                m.training = mode


def _preprocess(encoder: Encoder, preprocess: bool | Encoder | None) -> Encoder | None:
    if preprocess is True:
        return getattr(encoder, "transform", None)
    if preprocess is False or preprocess is None:
        return None
    return preprocess


@torch.no_grad()
def iter_features(
    encoder: Encoder,
    dataset: Dataset,
    batch_size: int = 256,
    device: str | torch.device | None = None,
    *,
    preprocess: bool | Encoder | None = False,
    progress: bool | None = None,
    desc: str = "features",
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield ``(features [b, D], targets [b])`` batch by batch, on ``device``.

    Args:
        encoder: an ``nn.Module`` (put in eval mode during the pass, its modes
            restored afterwards) or any callable mapping a batch to ``[b, D]``
            (outputs with more dimensions are flattened).
        dataset: items ``(x, y, ...)``; read in order, without shuffling.
        batch_size: items per forward pass.
        device: where the batches go; default: the encoder's parameters' device.
        preprocess: True applies ``encoder.transform`` (e.g. a
            :class:`~neve.models.Backbone`'s resize and normalisation) first; a
            callable is applied instead; False/None applies nothing.
        progress: a progress bar; None (default) shows one on a terminal only.
        desc: the progress bar's label.
    """
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    device = _on_device(encoder, device)
    transform = _preprocess(encoder, preprocess)
    loader = DataLoader(dataset, batch_size=int(batch_size), shuffle=False)
    with _EvalMode(encoder):
        for batch in tqdm(loader, desc=desc, disable=None if progress is None else not progress):
            x = batch[0].to(device)
            y = check_labels(batch[1], "targets").to(device)  # no silent truncation
            yield _encode(encoder, x, transform), y


@torch.no_grad()
def encode(
    encoder: Encoder,
    images: torch.Tensor,
    batch_size: int = 256,
    device: str | torch.device | None = None,
    *,
    preprocess: bool | Encoder | None = False,
) -> torch.Tensor:
    """Features ``[N, D]`` (float32, CPU) of a tensor of inputs ``[N, ...]``, in batches."""
    device = _on_device(encoder, device)
    transform = _preprocess(encoder, preprocess)
    out = []
    with _EvalMode(encoder):
        for lo in range(0, len(images), int(batch_size)):
            x = images[lo : lo + int(batch_size)].to(device)
            out.append(_encode(encoder, x, transform).float().cpu())
    if not out:
        raise ValueError("images must hold at least one input, got an empty tensor")
    return torch.cat(out)


def _cache_path(encoder: Encoder, dataset: Dataset, cache_dir, preprocess) -> Path:
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir() / "features"
    name = getattr(encoder, "name", type(encoder).__name__)
    size = getattr(encoder, "input_size", "")
    weights = module_fingerprint(encoder) if isinstance(encoder, nn.Module) else "fn"
    pre = "pre" if preprocess else "raw"
    key = f"{name}-{size}px-{pre}-{weights}-{dataset_fingerprint(dataset)}"
    return folder / f"{key}.pt"


def extract_features(
    encoder: Encoder,
    dataset: Dataset,
    batch_size: int = 256,
    device: str | torch.device | None = None,
    cache_dir: str | os.PathLike | None = None,
    cache: bool | None = None,
    progress: bool | None = None,
    *,
    preprocess: bool | Encoder | None = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Features of every item of ``dataset`` under a frozen ``encoder`` (:func:`iter_features`).

    With a :class:`~neve.models.Backbone`, ``backbone.transform`` runs first
    (``preprocess=True``, the default here).

    Args:
        cache_dir: folder of the disk cache (default ``$NEVE_CACHE/features``).
        cache: keep the result on disk, keyed by the encoder's name and weights
            and :func:`dataset_fingerprint`, so a second call is a load. None
            (default) caches for named encoders (``encoder.name``, as a Backbone
            has) and not for other callables.

    Returns:
        ``(features, targets)``: float32 ``[N, D]`` and int64 ``[N]``, on CPU.
    """
    if cache is None:
        cache = isinstance(encoder, nn.Module) and hasattr(encoder, "name")
    path = _cache_path(encoder, dataset, cache_dir, preprocess) if cache else None
    if path is not None and path.is_file():
        stored = torch.load(path, weights_only=True)
        return stored["features"], stored["targets"]
    feats, labels = [], []
    desc = f"features {getattr(encoder, 'name', '')}".strip()
    for f, y in iter_features(
        encoder, dataset, batch_size, device, preprocess=preprocess, progress=progress, desc=desc
    ):
        feats.append(f.float().cpu())
        labels.append(y.cpu())
    if not feats:
        raise ValueError("dataset must hold at least one item, got an empty dataset")
    features, targets = torch.cat(feats), torch.cat(labels)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".partial")
        torch.save({"features": features, "targets": targets}, partial)
        partial.replace(path)
    return features, targets
