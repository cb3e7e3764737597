"""Checks of public arguments, shared by every part of neve (issue #12).

Each check returns the value in canonical form or raises a ``TypeError`` (wrong
kind of value) or ``ValueError`` (right kind, wrong value) whose message names
the argument and says what was expected. Booleans are not accepted as numbers,
and no value is silently truncated (``2.5`` is not an integer, ``'0.1'`` not a
number). ``models`` imports nothing else of neve, so benchmarks, plugins and
strategies all use this module.
"""

from __future__ import annotations

import math
import numbers
import operator
from typing import Any

import numpy as np
import torch


def check_int(value: Any, name: str, *, minimum: int | None = None, optional: bool = False):
    """``value`` as an ``int`` (``None`` passes when ``optional``); at least ``minimum``.

    Python and numpy integers and integer 0-d tensors are accepted; bools,
    floats and strings are not (``2.5`` is not silently truncated to 2).
    """
    if value is None and optional:
        return None
    expected = "an integer" + (" or None" if optional else "")
    if minimum is not None:
        expected += f" >= {minimum}"
    if isinstance(value, bool):
        raise TypeError(f"{name} must be {expected}, got {value!r}")
    try:
        out = operator.index(value)
    except TypeError as err:
        raise TypeError(f"{name} must be {expected}, got {value!r}") from err
    if minimum is not None and out < minimum:
        raise ValueError(f"{name} must be {expected}, got {out}")
    return out


def check_seed(value: Any, name: str = "seed") -> int:
    """A seed: an integer >= 0 (torch and numpy generators both accept it)."""
    return check_int(value, name, minimum=0)


def check_bool(value: Any, name: str) -> bool:
    """``value`` as a ``bool``; only ``True``/``False`` (numpy's included) are accepted."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return bool(value)


def check_number(value: object, name: str, *, positive: bool) -> float:
    """``value`` as a finite ``float``, ``> 0`` when ``positive`` else ``>= 0``."""
    expected = "a finite number " + ("> 0" if positive else ">= 0")
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be {expected}, got {value!r}")
    out = float(value)
    if not math.isfinite(out) or out < 0 or (positive and out == 0):
        raise ValueError(f"{name} must be {expected}, got {value!r}")
    return out


def check_fraction(value: Any, name: str) -> float:
    """A real number in ``[0, 1]`` (NaN refused) as a ``float``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number in [0, 1], got {value!r}")
    out = float(value)
    if not 0.0 <= out <= 1.0:  # also false for NaN
        raise ValueError(f"{name} must be in [0, 1], got {value!r}")
    return out


def check_labelled(dataset: Any, name: str) -> torch.Tensor:
    """The labels of a dataset with ``.targets``: a 1-d int64 tensor of integer values >= 0."""
    if not hasattr(dataset, "targets"):
        raise TypeError(f"{name} must be a dataset with .targets, got {type(dataset).__name__}")
    return check_labels(dataset.targets, f"{name}.targets")


def check_labels(targets: Any, name: str = "targets") -> torch.Tensor:
    """``targets`` as a 1-d int64 tensor; integer values >= 0 only (no silent truncation)."""
    if isinstance(targets, (str, bytes)):
        raise TypeError(f"{name} must be integer class labels, got {targets!r}")
    try:
        if not isinstance(targets, (torch.Tensor, np.ndarray, list, tuple)):
            targets = list(targets)  # e.g. an Avalanche DataAttribute
        t = torch.as_tensor(targets)
    except (TypeError, ValueError, RuntimeError) as err:
        kind = type(targets).__name__
        raise TypeError(f"{name} must be integer class labels, got {kind}") from err
    if t.dim() != 1:
        raise ValueError(f"{name} must be 1-d [N], got shape {tuple(t.shape)}")
    if t.dtype == torch.bool or t.is_complex():
        raise TypeError(f"{name} must be integer class labels, got dtype {t.dtype}")
    if t.is_floating_point():
        finite = bool(torch.isfinite(t).all())
        if not finite or not bool((t == t.round()).all()):
            raise ValueError(f"{name} must hold integer class labels, got non-integer values")
    t = t.long()
    if t.numel() and int(t.min()) < 0:
        raise ValueError(f"{name} must hold class labels >= 0, got {int(t.min())}")
    return t


def check_device(value: object, name: str = "device") -> torch.device:
    """``value`` as a ``torch.device`` that exists on this machine.

    Refuses a string torch cannot parse, and a CUDA (or MPS) device when none is
    available or its index is past the last GPU, before anything is moved there.
    """
    if not isinstance(value, (str, torch.device)):
        raise TypeError(f"{name} must be a str or torch.device, got {value!r}")
    try:
        device = torch.device(value)
    except RuntimeError as err:
        raise ValueError(f"{name} must name a torch device ('cpu', 'cuda', 'cuda:0'...), "
                         f"got {value!r}") from err
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ValueError(f"{name}={value!r} asks for a GPU, but torch finds no CUDA GPU "
                             "here; use device='cpu'")
        if device.index is not None and device.index >= count:
            raise ValueError(f"{name}={value!r}: there are only {count} CUDA GPU(s) here")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"{name}={value!r} asks for MPS, which is not available here")
    return device
