"""neve's checkpoint file: tensors and plain data only, with a SHA-256 of everything loaded.

The file is a ``torch.save`` of ``{"format": "neve.checkpoint", "version": 1,
"sha256": <hex>, "payload": <uint8 tensor>}``, where ``payload`` holds the bytes
of a ``torch.save`` of the checkpoint's contents (a dict of tensors, numbers,
strings, ``None``, ``torch.dtype`` and lists, tuples and dicts of those) and
``sha256`` is their SHA-256. Both levels load with ``torch.load(...,
weights_only=True)``, which builds no object but those, so reading a file never
runs code from it; the hash is checked before the payload is read, so a damaged
file is refused whole. Any failure to read gives one :class:`CheckpointError`
that names the file.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch

FORMAT = "neve.checkpoint"
VERSION = 1
SCALARS = (type(None), bool, int, float, str, torch.dtype)
PICKLE_RISK = (
    "save_checkpoint(..., format='pickle') stores the whole strategy instead, but "
    "loading such a file runs code from it: use it only for files you trust"
)


class CheckpointError(ValueError):
    """A checkpoint file that cannot be loaded into the strategy at hand; nothing was changed."""


def plain_data(obj: object, where: str) -> object:
    """``obj`` as tensors and plain data that ``torch.load(weights_only=True)`` reads back.

    Numpy scalars become Python numbers, ``defaultdict`` a ``dict``, parameters
    plain (detached) tensors; a ``state_dict``'s ``_metadata`` is kept.

    Raises:
        ValueError: naming the place (``where`` and the keys under it) of the first
            value that is none of these.
    """
    if isinstance(obj, SCALARS):
        return obj
    if isinstance(obj, np.generic):
        return obj.item()
    if type(obj) in (torch.Tensor, torch.nn.Parameter):
        return obj.detach()
    if type(obj) in (list, tuple, torch.Size):
        return type(obj)(plain_data(v, f"{where}[{i}]") for i, v in enumerate(obj))
    if isinstance(obj, dict) and type(obj).__module__ in ("builtins", "collections"):
        out = OrderedDict() if isinstance(obj, OrderedDict) else {}
        for key, value in obj.items():
            if not isinstance(key, SCALARS[:-1]):
                raise ValueError(f"{where} has a key of type {type(key).__name__}: {key!r}")
            out[key] = plain_data(value, f"{where}[{key!r}]")
        if hasattr(obj, "_metadata"):
            out._metadata = obj._metadata  # module versions of a state_dict
        return out
    raise ValueError(f"{where} (a {type(obj).__module__}.{type(obj).__qualname__})")


def write_state_file(path: str | os.PathLike, payload: dict) -> None:
    """Write ``payload`` (plain data, see :func:`plain_data`) to ``path`` with its SHA-256.

    The file is written next to ``path`` and then renamed over it, so an
    interrupted save leaves the previous checkpoint whole.
    """
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    blob = buffer.getvalue()
    outer = {
        "format": FORMAT,
        "version": VERSION,
        "sha256": hashlib.sha256(blob).hexdigest(),
        "payload": torch.frombuffer(bytearray(blob), dtype=torch.uint8),
    }
    path = Path(path)
    partial = path.with_name(path.name + ".partial")
    torch.save(outer, partial)
    os.replace(partial, path)


def damaged(path: str | os.PathLike, reason: str) -> CheckpointError:
    """The one error for a file that cannot be read as a neve checkpoint."""
    return CheckpointError(
        f"checkpoint {os.fspath(path)} is damaged or is not a neve checkpoint ({reason}); "
        "nothing was loaded. A file written with save_checkpoint(..., format='pickle') "
        "loads only with maybe_load_checkpoint(..., format='pickle'), which runs code "
        "from the file: only for files you trust"
    )


def read_state_file(
    path: str | os.PathLike, map_location: str | torch.device | None = None
) -> dict:
    """The payload written by :func:`write_state_file`, its SHA-256 checked.

    Raises:
        CheckpointError: the file is damaged (truncated, a byte changed, empty),
            is not a neve checkpoint, or holds anything but tensors and plain data.
    """
    try:
        outer = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 -- every reader failure means the same
        raise damaged(path, f"{type(error).__name__} while reading it") from error
    if not (isinstance(outer, dict) and outer.get("format") == FORMAT):
        raise damaged(path, "no neve checkpoint header")
    if outer.get("version") != VERSION:
        raise damaged(path, f"format version {outer.get('version')!r}, expected {VERSION}")
    blob, digest = outer.get("payload"), outer.get("sha256")
    if not (isinstance(blob, torch.Tensor) and blob.dtype == torch.uint8 and blob.dim() == 1):
        raise damaged(path, "no payload")
    data = blob.numpy().tobytes()
    if hashlib.sha256(data).hexdigest() != digest:
        raise damaged(path, "its SHA-256 does not match its contents")
    try:
        payload = torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except Exception as error:  # noqa: BLE001
        raise damaged(path, f"{type(error).__name__} while reading its payload") from error
    if not isinstance(payload, dict):
        raise damaged(path, "its payload is not a dict")
    return payload
