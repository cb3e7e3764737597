"""neve's checkpoint file: tensors and plain data only, with a SHA-256 of everything loaded.

The file is a ``torch.save`` of ``{"format": "neve.checkpoint", "version": 1,
"sha256": <hex>, "payload": <uint8 tensor>}``, where ``payload`` holds the bytes
of a ``torch.save`` of the checkpoint's contents (a dict of tensors, numbers,
strings, ``None``, ``torch.dtype`` and lists, tuples and dicts of those) and
``sha256`` is their SHA-256. Both levels load with ``torch.load(...,
weights_only=True)``, which builds no object but those, so reading a file never
runs code from it; the hash is checked before the payload is read, so a damaged
file is refused whole. Any failure to read gives one :class:`CheckpointError`
that names the file. Writing goes through a temporary file of its own in the
same folder and an atomic rename, so a failed or killed save leaves the
previous checkpoint whole, and two writers never collide.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections import OrderedDict

import numpy as np
import torch

from ..models.atomic_file import write_atomically

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


def write_checkpoint_file(path: str | os.PathLike, payload: dict) -> None:
    """Write ``payload`` (plain data, see :func:`plain_data`) to ``path`` with its SHA-256.

    Raises:
        OSError: naming ``path`` and the cause (no space left, no permission); the
            file at ``path``, if any, is left as it was.
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
    whole = io.BytesIO()
    torch.save(outer, whole)  # in memory first: a full disk then fails in a plain write
    write_atomically(path, lambda file: file.write(whole.getbuffer()))


def damaged_file_error(path: str | os.PathLike, reason: str) -> CheckpointError:
    """The one error for a file that cannot be read as a neve checkpoint."""
    return CheckpointError(
        f"checkpoint {os.fspath(path)} is damaged or is not a neve checkpoint ({reason}); "
        "nothing was loaded. A file written with save_checkpoint(..., format='pickle') "
        "loads only with maybe_load_checkpoint(..., format='pickle'), which runs code "
        "from the file: only for files you trust"
    )


def read_checkpoint_file(
    path: str | os.PathLike, map_location: str | torch.device | None = None
) -> dict:
    """The payload written by :func:`write_checkpoint_file`, its SHA-256 checked.

    Raises:
        CheckpointError: the file is damaged (truncated, a byte changed, empty),
            is not a neve checkpoint, or holds anything but tensors and plain data.
    """
    try:
        outer = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 -- every reader failure means the same
        raise damaged_file_error(path, f"{type(error).__name__} while reading it") from error
    if not (isinstance(outer, dict) and outer.get("format") == FORMAT):
        raise damaged_file_error(path, "no neve checkpoint header")
    if outer.get("version") != VERSION:
        raise damaged_file_error(path, f"format version {outer.get('version')!r}, expected "
                                 f"{VERSION}")
    blob, digest = outer.get("payload"), outer.get("sha256")
    if not (isinstance(blob, torch.Tensor) and blob.dtype == torch.uint8 and blob.dim() == 1):
        raise damaged_file_error(path, "no payload")
    data = blob.numpy().tobytes()
    if hashlib.sha256(data).hexdigest() != digest:
        raise damaged_file_error(path, "its SHA-256 does not match its contents")
    try:
        payload = torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except Exception as error:  # noqa: BLE001
        raise damaged_file_error(path, f"{type(error).__name__} while reading its payload") \
            from error
    if not isinstance(payload, dict):
        raise damaged_file_error(path, "its payload is not a dict")
    return payload


_FIELDS = {"strategy_class": str, "next_experience": int, "settings": dict, "strategy": dict,
           "model": dict, "optimizer": (dict, type(None)), "plugins": list,
           "optimized_param_names": (list, type(None)), "metric_classes": list, "rng": dict}


def check_fields(payload: dict) -> None:
    """Refuse (KeyError/TypeError) a payload whose fields are not what a save writes.

    ``next_experience`` must be the count of trained experiences of the file's own clock.
    """
    for key, kind in {**_FIELDS, **{f"model.{k}": dict for k in ("state", "training",
                                                                "requires_grad")}}.items():
        value = payload["model"][key[6:]] if key.startswith("model.") else payload[key]
        if not isinstance(value, kind) or isinstance(value, bool):
            raise TypeError(f"field {key!r} is a {type(value).__name__}")
    if any(not isinstance(p, dict) or {"class", "kind", "state"} - p.keys()
           for p in payload["plugins"]):
        raise TypeError("field 'plugins' holds an entry that is not a plugin's")
    counts = [p["state"].get("train_exp_counter") for p in payload["plugins"]
              if p["kind"] == "adapter" and str(p["class"]).endswith(".Clock")]
    if counts != [payload["next_experience"]]:
        raise TypeError(f"field 'next_experience' is {payload['next_experience']!r}, but the "
                        f"file's clock counts {counts} trained experiences")
