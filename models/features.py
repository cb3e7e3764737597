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
import json
import os
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.std import tqdm

from .core.checks import Bool, Device, Int, Text, validated
from .core.data_checks import check_labels
from .feature_cache import (
    dataset_fingerprint,
    entry_bytes,
    identify,
    module_fingerprint,
    read_entry,
    stored_shapes,
    write_entry,
)

__all__ = ["dataset_fingerprint", "default_cache_dir", "encode", "extract_features",
           "iter_features", "module_fingerprint"]

Encoder = Callable[[torch.Tensor], torch.Tensor]


def default_cache_dir() -> Path:
    """Where neve keeps unpacked data and feature caches.

    ``$NEVE_CACHE`` if set, else ``~/.cache/neve``.
    """
    return Path(os.environ.get("NEVE_CACHE", Path.home() / ".cache" / "neve"))


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


def _check_finite(x: torch.Tensor, name: str, first: int) -> None:
    """Refuse floating-point inputs with NaN or inf (they would poison every feature)."""
    if isinstance(x, torch.Tensor) and x.is_floating_point() and not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} contains NaN or inf inputs (items {first}-{first + len(x) - 1}); "
                         "clean them first: their features would not be finite")


@validated(batch_size=Int(1), device=Device(optional=True))
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
    finite: bool = False,
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
        finite: refuse (ValueError naming ``dataset``) floating-point inputs with NaN or inf.
    """
    device = _on_device(encoder, device)
    transform = _preprocess(encoder, preprocess)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    seen = 0
    with _EvalMode(encoder):
        for batch in tqdm(loader, desc=desc, disable=None if progress is None else not progress):
            if finite:
                _check_finite(batch[0], "dataset", seen)
            seen += len(batch[0])
            x = batch[0].to(device)
            y = check_labels(batch[1], "targets").to(device)  # no silent truncation
            yield _encode(encoder, x, transform), y


@validated(batch_size=Int(1), device=Device(optional=True))
@torch.no_grad()
def encode(
    encoder: Encoder,
    images: torch.Tensor,
    batch_size: int = 256,
    device: str | torch.device | None = None,
    *,
    preprocess: bool | Encoder | None = False,
) -> torch.Tensor:
    """Features ``[N, D]`` (float32, CPU) of a tensor of inputs ``[N, ...]``, in batches.

    Raises:
        TypeError, ValueError: naming ``images`` (not a tensor, NaN or inf inputs),
            ``batch_size`` (not an integer >= 1) or ``device`` (not on this machine).
    """
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"images must be a torch.Tensor [N, ...], got {type(images).__name__}")
    _check_finite(images, "images", 0)
    device = _on_device(encoder, device)
    transform = _preprocess(encoder, preprocess)
    out = []
    with _EvalMode(encoder):
        for lo in range(0, len(images), batch_size):
            x = images[lo : lo + batch_size].to(device)
            out.append(_encode(encoder, x, transform).float().cpu())
    if not out:
        raise ValueError("images must hold at least one input, got an empty tensor")
    return torch.cat(out)


_UNWRITABLE_WARNED: set[str] = set()


def _made_from(encoder: Encoder, dataset: Dataset, transform: Encoder | None,
               cache_key: str | None) -> dict | None:
    """What a cache entry of this request must record, or None when neve cannot identify
    the encoder or the preprocessing and no ``cache_key`` stands in for them."""
    parts = {"encoder": identify(encoder) if isinstance(encoder, nn.Module) else None,
             "preprocess": identify(transform)}
    if cache_key is None and None in parts.values():
        return None
    return {**parts, "key": cache_key, "dataset": dataset_fingerprint(dataset),
            "items": len(dataset)}


def _cache_path(encoder: Encoder, made_from: dict, cache_dir) -> Path:
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir() / "features"
    name = getattr(encoder, "name", type(encoder).__name__)
    size = getattr(encoder, "input_size", "")
    digest = hashlib.sha256(json.dumps(made_from, sort_keys=True).encode()).hexdigest()
    return folder / f"{name}-{size}px-{digest[:32]}.pt"


def _cached(path: Path, made_from: dict) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The entry at ``path`` if it is whole and this request's; else None, with one warning
    naming the file when one is there."""
    if not path.is_file():
        return None
    try:
        return read_entry(path, made_from)
    except ValueError as why:
        warnings.warn(f"feature cache entry {path} is damaged or not this request's ({why}); "
                      "ignoring it and computing the features again", RuntimeWarning,
                      stacklevel=3)
        return None


def _store(path: Path, made_from: dict, features: torch.Tensor, targets: torch.Tensor) -> None:
    """Write the entry; a folder that cannot be written (read-only, full) warns once."""
    made_from = {**made_from, "stored": stored_shapes(*features.shape)}
    try:
        write_entry(path, entry_bytes(made_from, features, targets))
    except OSError as error:
        if str(path.parent) not in _UNWRITABLE_WARNED:
            _UNWRITABLE_WARNED.add(str(path.parent))
            warnings.warn(f"feature cache not written ({error}); the features are returned "
                          "but not kept", RuntimeWarning, stacklevel=3)


@validated(batch_size=Int(1), device=Device(optional=True), cache=Bool(optional=True),
           progress=Bool(optional=True), cache_key=Text("a non-empty string", optional=True))
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
    cache_key: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Features of every item of ``dataset`` under a frozen ``encoder`` (:func:`iter_features`).

    With a :class:`~neve.models.Backbone`, ``backbone.transform`` runs first
    (``preprocess=True``, the default here).

    Args:
        cache_dir: folder of the disk cache (default ``$NEVE_CACHE/features``).
        cache: keep the result on disk, so a second call is a load. An entry records
            what it was made from (:mod:`neve.models.feature_cache`): it is returned only
            when it is whole and made from the same encoder weights, preprocessing and
            dataset items; anything else is recomputed, with a warning naming the file.
            None (default) caches for named encoders (``encoder.name``, as a Backbone
            has) whose preprocessing neve identifies; True asks for the cache and refuses
            (naming ``cache_key``) what neve cannot identify.
        cache_key: a string that identifies an encoder or preprocessing neve cannot
            identify (a function, a lambda); the dataset is still fingerprinted.

    Returns:
        ``(features, targets)``: float32 ``[N, D]`` and int64 ``[N]``, on CPU.

    Raises:
        ValueError: naming ``dataset`` for NaN or inf inputs; naming ``cache_key`` when
            ``cache=True`` and neve cannot identify the encoder or preprocessing.
    """
    made_from, path = None, None
    if cache is not False:
        transform = _preprocess(encoder, preprocess)
        named = cache is True or (isinstance(encoder, nn.Module) and hasattr(encoder, "name"))
        made_from = _made_from(encoder, dataset, transform, cache_key) if named else None
        if made_from is None and cache is True:
            raise ValueError("cache=True, but neve cannot identify the encoder or the preprocess "
                             "callable (only nn.Modules and torchvision transforms are): pass "
                             "cache_key='...' naming them, or cache=False")
        path = None if made_from is None else _cache_path(encoder, made_from, cache_dir)
    hit = None if path is None else _cached(path, made_from)
    if hit is not None:
        return hit
    feats, labels = [], []
    desc = f"features {getattr(encoder, 'name', '')}".strip()
    for f, y in iter_features(encoder, dataset, batch_size, device, preprocess=preprocess,
                              progress=progress, desc=desc, finite=True):
        feats.append(f.float().cpu())
        labels.append(y.cpu())
    if not feats:
        raise ValueError("dataset must hold at least one item, got an empty dataset")
    features, targets = torch.cat(feats), torch.cat(labels)
    if path is not None:
        _store(path, made_from, features, targets)
    return features, targets
