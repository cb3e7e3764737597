"""neve's checkpoint file: tensors and plain data only, with a SHA-256 of everything loaded.

The file is a ``torch.save`` of ``{"format": "neve.checkpoint", "version": 1,
"sha256": <hex>, "payload": <uint8 tensor>}``; ``payload`` holds the bytes of a
``torch.save`` of the contents (tensors, numbers, strings, ``None``, dtypes, and
lists, tuples and dicts of those) and ``sha256`` their SHA-256. Both levels load
with ``torch.load(..., weights_only=True)``, so reading never runs code from the
file; the hash is checked before the payload is read. A write goes through a
temporary file of its own and an atomic rename: a failed or killed save leaves
the previous checkpoint whole, and two writers never collide.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections import OrderedDict
from collections.abc import Callable
from operator import attrgetter

import numpy as np
import torch
from avalanche.evaluation.metrics import (
    AccuracyMatrixPluginMetric,
    ExperienceBWT,
    ExperienceForgetting,
    StreamBWT,
    StreamForgetting,
)
from avalanche.training.determinism.rng_manager import RNGManager
from avalanche.training.plugins import LRSchedulerPlugin, ReplayPlugin
from avalanche.training.plugins.clock import Clock
from avalanche.training.templates.base_sgd import PeriodicEval

from ..models.atomic_file import write_atomically
from ..models.core.distributed import is_distributed

FORMAT = "neve.checkpoint"
VERSION = 1
SCALARS = (type(None), bool, int, float, str, torch.dtype)
PICKLE_RISK = (
    "save_checkpoint(..., format='pickle') stores the whole strategy instead, but "
    "loading such a file runs code from it: use it only for files you trust"
)


class CheckpointError(ValueError):
    """A checkpoint file that cannot be loaded into the strategy at hand; nothing was changed."""


_ADAPTERS: dict[type, tuple[Callable, Callable, Callable]] = {}


def register_state(cls: type, get: Callable[[object], dict], put: Callable[[object, dict], None],
                   parts: Callable[[object], dict] = lambda obj: {}) -> None:
    """Checkpoint instances of ``cls`` (without ``state_dict``): ``get(obj)`` gives its state as
    plain data, ``put(obj, state)`` restores it, ``parts(obj)`` names the objects whose
    classes a file must match (e.g. a replay plugin's storage policy)."""
    _ADAPTERS[cls] = (get, put, parts)


def adapter_of(obj: object) -> tuple[Callable, Callable, Callable] | None:
    return _ADAPTERS.get(type(obj))


def _attributes(*names: str) -> tuple[Callable, Callable]:
    """An adapter's ``get`` / ``put`` for plain attributes (dotted: of a part); ``put`` reads
    every value before it sets one (``load_component`` hands it a copy of the file's state)."""
    def put(obj, state: dict) -> None:
        values = [state[name] for name in names]
        for name, value in zip(names, values, strict=True):
            owner, _, attr = name.rpartition(".")
            setattr(attrgetter(owner)(obj) if owner else obj, attr, value)
    return lambda obj: {name: attrgetter(name)(obj) for name in names}, put


def _storage(plugin) -> dict:
    policy = plugin.storage_policy
    if not callable(getattr(policy, "state_dict", None)):
        raise ValueError(f"cannot checkpoint plugin ReplayPlugin: its storage_policy "
                         f"({type(policy).__name__}) has no state_dict, which the default "
                         f"checkpoint format cannot store; {PICKLE_RISK}")
    return {"storage_policy": policy.state_dict()}


register_state(Clock, *_attributes("train_iterations", "train_exp_counter", "train_exp_epochs",
                                   "train_exp_iterations", "train_epoch_iterations",
                                   "total_iterations"))
register_state(PeriodicEval, *_attributes("do_final", "_is_eval_updated"))
register_state(LRSchedulerPlugin, lambda p: {"scheduler": p.scheduler.state_dict()},
               lambda p, s: p.scheduler.load_state_dict(s["scheduler"]))
register_state(ReplayPlugin, _storage,
               lambda p, s: p.storage_policy.load_state_dict(s["storage_policy"]),
               lambda p: {"storage_policy": p.storage_policy})
# Avalanche's accuracy-matrix, forgetting and BWT metrics: between experiences, where a
# save happens, this is all they carry over (their accuracy meters are reset before use)
register_state(AccuracyMatrixPluginMetric, *_attributes("matrix", "count", "online",
                                                        "num_training_steps"))
_FORGETTING = ("forgetting.initial", "forgetting.last", "eval_exp_id", "train_exp_id")
for _cls in (ExperienceForgetting, ExperienceBWT):
    register_state(_cls, *_attributes(*_FORGETTING))
for _cls in (StreamForgetting, StreamBWT):
    register_state(_cls, *_attributes(*_FORGETTING, "stream_forgetting.summed",
                                      "stream_forgetting.weight"))


def plain_data(obj: object, where: str) -> object:
    """``obj`` as data ``torch.load(weights_only=True)`` reads back (numpy scalars as numbers,
    parameters as detached tensors, a ``state_dict``'s ``_metadata`` kept); a ValueError
    names the place (``where`` and the keys under it) of the first value that is none."""
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
    """Write ``payload`` (plain data) to ``path`` with its SHA-256; an OSError names ``path``
    and the cause (no space left, no permission), and leaves a file at ``path`` whole."""
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
    """The payload of :func:`write_checkpoint_file`, its SHA-256 checked; a CheckpointError for
    a damaged file (truncated, a byte changed, empty) or one that is not a neve checkpoint."""
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


def rng_state() -> dict:
    """The states of Avalanche's ``RNGManager`` generators as plain data."""
    state = {name: g["save_state"]() for name, g in RNGManager.random_generators.items()}
    if "numpy" in state:  # numpy's MT19937 keys as a tensor
        kind, keys, pos, has_gauss, cached = state["numpy"]
        state["numpy"] = {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)),
                          "pos": int(pos), "has_gauss": int(has_gauss), "cached": float(cached)}
    if torch.cuda.is_available():  # whose generator the others continue under torch.distributed
        state["torch.cuda.current"] = torch.cuda.current_device()
    return state


def load_rng_state(state: dict) -> None:
    """Put back :func:`rng_state`'s states."""
    for name, generator in RNGManager.random_generators.items():
        value = state.get(name)
        if value is None:
            continue
        if name == "numpy":
            value = (value["kind"], value["keys"].cpu().numpy().astype(np.uint32),
                     value["pos"], value["has_gauss"], value["cached"])
        elif name in ("torch", "torch.cuda"):
            value = value.cpu() if name == "torch" else [v.cpu() for v in value]
        generator["load_state"](value)
        if name == "torch.cuda":
            continue_saving_process_cuda_rng(value, state.get("torch.cuda.current"))


def continue_saving_process_cuda_rng(states: list[torch.Tensor], saved_device: int | None
                                     ) -> None:
    """Under ``torch.distributed``, this GPU's generator continues rank 0's ``saved_device``
    (seeded and drawn alike in every process, they are equal in an uninterrupted run)."""
    if is_distributed() and torch.cuda.is_available() and saved_device is not None:
        torch.cuda.set_rng_state(states[saved_device], device=torch.cuda.current_device())
