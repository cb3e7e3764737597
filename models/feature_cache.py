"""The feature cache's entries: what they were made from, and a check of every file read.

An entry is ``MAGIC``, the SHA-256 of the rest, then a ``torch.save`` (loaded with
``weights_only=True``: reading never runs code from the file) of ``{"format", "version",
"made_from", "features", "targets"}``. ``made_from``
records the encoder's identity (class, ``repr`` and a hash of every parameter's and
buffer's name, shape, dtype and value), the preprocessing's identity, the dataset's
fingerprint over all its items, and the shapes and dtypes of what is stored. An entry is
returned only when its header, its hash, its ``made_from`` and its tensors are exactly
what the request expects; anything else (empty, truncated, flipped bytes, another
request's file under this name) is reported as damaged and recomputed.

What neve identifies (and so caches without a key): ``None``; an ``nn.Module`` (its
class, ``repr`` and weights, e.g. :class:`~neve.models.ImagePreprocess`); a torchvision
transform other than ``Lambda`` whose ``repr`` names no memory address, composed ones
through their parts. Any other callable (a function, a lambda, a ``functools.partial``)
has no identity neve can check: it is cached only under a caller's explicit
``cache_key``.
"""

from __future__ import annotations

import hashlib
import io
import json
import numbers
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from .atomic_file import write_atomically

FORMAT = "neve.features"
VERSION = 1
MAGIC = b"neve.features/1\n"  # then the SHA-256 (32 bytes) of the rest, a torch.save
_CHUNK = 1 << 24  # bytes hashed at a time


def _update_tensor(h: hashlib._Hash, t: torch.Tensor) -> None:
    """Hash a tensor's shape, dtype and bytes (any dtype, bfloat16 included), in chunks."""
    t = t.detach().cpu().contiguous()
    h.update(str((tuple(t.shape), str(t.dtype))).encode())
    raw = t.reshape(-1).view(torch.uint8) if t.numel() else torch.empty(0, dtype=torch.uint8)
    for lo in range(0, raw.numel(), _CHUNK):
        h.update(raw[lo:lo + _CHUNK].numpy().tobytes())


def _update_value(h: hashlib._Hash, value: object) -> None:
    """Hash one part of a dataset item: tensors and arrays by content, numbers and text by
    value, sequences part by part, anything else (a PIL image...) as an array."""
    if isinstance(value, torch.Tensor):
        _update_tensor(h, value)
    elif isinstance(value, (str, bytes, numbers.Number)) or value is None:
        h.update(repr(value).encode())
    elif isinstance(value, (tuple, list)):
        h.update(f"seq{len(value)}".encode())
        for part in value:
            _update_value(h, part)
    else:
        _update_tensor(h, torch.as_tensor(np.asarray(value)))


def module_fingerprint(module: nn.Module) -> str:
    """SHA-256 of a module's parameters and buffers: names, shapes, dtypes and values."""
    h = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        h.update(name.encode())
        if isinstance(tensor, torch.Tensor):
            _update_tensor(h, tensor)
    return h.hexdigest()


def identify(obj: object) -> str | None:
    """A deterministic identity of a preprocessing or encoder, or None when neve has none.

    ``None`` is ``"none"``; an ``nn.Module`` is its class, ``repr`` and
    :func:`module_fingerprint`; a torchvision transform (not ``Lambda``) is its
    ``repr``, composed transforms only when every part is identified. A ``repr``
    that shows a memory address (``at 0x``) identifies nothing.
    """
    if obj is None:
        return "none"
    kind = f"{type(obj).__module__}.{type(obj).__qualname__}"
    text = repr(obj)
    if " at 0x" in text or type(obj).__name__ == "Lambda":
        return None
    if isinstance(obj, nn.Module):
        return f"{kind}|{text}|{module_fingerprint(obj)}"
    if type(obj).__module__.startswith("torchvision.transforms"):
        parts = getattr(obj, "transforms", None)
        if parts is not None and any(identify(p) is None for p in parts):
            return None
        return f"{kind}|{text}"
    return None


def dataset_fingerprint(dataset: Dataset) -> str:
    """SHA-256 that changes when any item, label or transform of ``dataset`` changes.

    Its class, length, ``indices`` (of a subset), ``targets`` and transforms always
    count. The whole ``.data`` array stands for the items when the dataset has one
    and every transform on the way is identified (:func:`identify`); otherwise
    every item is read and hashed, in order.
    """
    h = hashlib.sha256()
    h.update(f"{type(dataset).__qualname__}|{len(dataset)}".encode())
    layers, inner = [dataset], dataset
    while hasattr(inner, "indices") and hasattr(inner, "dataset"):
        _update_tensor(h, torch.as_tensor(np.asarray(inner.indices), dtype=torch.long))
        inner = inner.dataset
        layers.append(inner)
    transforms = [getattr(d, a, None) for d in layers for a in ("transform", "target_transform")]
    identities = [identify(t) for t in transforms]
    h.update(json.dumps(identities).encode())
    targets = getattr(dataset, "targets", None)
    if targets is not None:
        _update_tensor(h, torch.as_tensor(np.asarray(targets)))
    data = getattr(inner, "data", None)
    if isinstance(data, (torch.Tensor, np.ndarray)) and None not in identities:
        h.update(b"data")
        _update_tensor(h, torch.as_tensor(data))
    else:
        h.update(b"items")
        for i in range(len(dataset)):
            _update_value(h, dataset[i])
    return h.hexdigest()


def entry_bytes(made_from: dict, features: torch.Tensor, targets: torch.Tensor) -> bytes:
    """The bytes of a cache entry (see the module docstring)."""
    buffer = io.BytesIO()
    torch.save({"format": FORMAT, "version": VERSION, "made_from": made_from,
                "features": features, "targets": targets}, buffer)
    body = buffer.getvalue()
    return MAGIC + hashlib.sha256(body).digest() + body


def stored_shapes(n: int, dim: int) -> dict:
    """What ``made_from`` records of the stored tensors."""
    return {"features": [n, dim, "torch.float32"], "targets": [n, "torch.int64"]}


def read_entry(path: Path, made_from: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``(features, targets)`` of the entry at ``path``, when it is whole (every byte
    under its SHA-256) and made from exactly ``made_from`` (its ``"stored"`` aside).

    Raises:
        ValueError: saying what is wrong (not a neve entry, its hash, another request's).
    """
    raw = path.read_bytes()
    head, digest, body = raw[:len(MAGIC)], raw[len(MAGIC):len(MAGIC) + 32], raw[len(MAGIC) + 32:]
    if head != MAGIC:
        raise ValueError("not a neve feature-cache entry of this version")
    if hashlib.sha256(body).digest() != digest:
        raise ValueError("its SHA-256 does not match its contents")
    try:
        entry = torch.load(io.BytesIO(body), map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 -- every reader failure means the same
        raise ValueError(f"{type(error).__name__} while reading it") from error
    if not (isinstance(entry, dict) and entry.get("format") == FORMAT
            and entry.get("version") == VERSION and isinstance(entry.get("made_from"), dict)):
        raise ValueError("not a neve feature-cache entry of this version")
    stored = entry["made_from"]
    if {k: v for k, v in stored.items() if k != "stored"} != \
            {k: v for k, v in made_from.items() if k != "stored"}:
        raise ValueError("it was made from another encoder, preprocessing or dataset")
    features, targets = entry.get("features"), entry.get("targets")
    if not (isinstance(features, torch.Tensor) and isinstance(targets, torch.Tensor)
            and features.dim() == 2 and stored.get("stored") == stored_shapes(*features.shape)
            and [*targets.shape, str(targets.dtype)] == stored["stored"]["targets"]
            and str(features.dtype) == "torch.float32" and len(features) == made_from["items"]):
        raise ValueError("its tensors are not the recorded shapes and dtypes")
    return features, targets


def write_entry(path: Path, blob: bytes) -> None:
    """Write an entry through a temporary file of this writer and an atomic rename.

    Raises:
        OSError: naming ``path`` and the cause (no space left, no permission...).
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OSError(error.errno, f"cannot write {path}: {error.strerror}") from error
    write_atomically(path, lambda file: file.write(blob))

