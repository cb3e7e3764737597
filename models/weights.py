"""Weights of a backbone from a local file, checked against the network before loading.

:func:`read_state_dict` reads a ``.pth``/``.pt``/``.bin`` (``torch.load``,
``weights_only=True``) or ``.safetensors`` file and unwraps the usual containers
(``{"state_dict": ...}``, ``{"model": ...}``, a ``module.`` prefix of
DistributedDataParallel). :func:`load_checked` compares the file's keys and
shapes with the network's and refuses a mismatch with a ``ValueError`` that
names the file, the missing and unexpected keys and the shape differences;
nothing is loaded then.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from torch import nn

WEIGHT_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors")
_CONTAINER_KEYS = ("state_dict", "model_state_dict", "model", "module", "net")


class WeightsUnavailableError(OSError):
    """The library could not fetch its pretrained weights (offline, or a failed download)."""


def _unwrap(obj: object, path: Path) -> dict[str, torch.Tensor]:
    for _ in range(3):
        if isinstance(obj, Mapping) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
            inner = next((obj[k] for k in _CONTAINER_KEYS if isinstance(obj.get(k), Mapping)), None)
            if inner is None:
                break
            obj = inner
    if not isinstance(obj, Mapping):
        raise ValueError(
            f"weights file {path} holds a {type(obj).__name__}, not a state dict "
            "(a mapping of parameter names to tensors)"
        )
    state = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not state:
        raise ValueError(f"weights file {path} holds no tensors")
    if all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The state dict stored in a local weights file.

    Args:
        path: a ``.pth``, ``.pt``, ``.bin`` or ``.safetensors`` file.

    Returns:
        ``{name: tensor}`` on the CPU.

    Raises:
        FileNotFoundError: no such file.
        ValueError: another suffix, or a file that holds no state dict.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} does not exist")
    suffix = path.suffix.lower()
    if suffix not in WEIGHT_SUFFIXES:
        raise ValueError(f"weights file {path} must end in one of {WEIGHT_SUFFIXES}")
    if suffix == ".safetensors":
        from safetensors.torch import load_file

        return _unwrap(load_file(str(path), device="cpu"), path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle or zip errors of a file that is not a torch checkpoint
        raise ValueError(f"weights file {path} could not be read by torch.load: {err}") from err
    return _unwrap(obj, path)


def _listing(keys: list[str], limit: int = 8) -> str:
    shown = ", ".join(keys[:limit])
    return f"{shown}, ... ({len(keys)} in all)" if len(keys) > limit else shown


def load_checked(
    net: nn.Module,
    state: Mapping[str, torch.Tensor],
    source: str,
    ignore: Iterable[str] = (),
) -> None:
    """Load ``state`` into ``net`` after checking that every key and shape matches.

    Args:
        net: the network.
        state: ``{name: tensor}`` (e.g. from :func:`read_state_dict`).
        source: what the state came from (a path), for the error message.
        ignore: module names whose entries in ``state`` are dropped first (the
            classifier that the backbone replaces by its features).

    Raises:
        ValueError: naming ``source`` with the missing keys, the unexpected keys and
            the shape mismatches; ``net`` is unchanged then.
    """
    prefixes = tuple(f"{p}." for p in ignore)
    state = {k: v for k, v in state.items() if not k.startswith(prefixes) and k not in ignore}
    own = net.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing keys: {_listing(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {_listing(unexpected)}")
        if shapes:
            parts.append(f"shape mismatches: {_listing(shapes, 4)}")
        raise ValueError(
            f"weights {source} do not fit the network {type(net).__name__}: " + "; ".join(parts)
        )
    net.load_state_dict(state, strict=True)
