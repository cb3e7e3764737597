"""Checks of public arguments for neve's strategies (issue #12).

Each check returns the value in canonical form or raises a ``TypeError`` (wrong
kind of value) or ``ValueError`` (right kind, wrong value) whose message names
the argument and says what was expected. Booleans are not accepted as numbers.
"""

from __future__ import annotations

import math
import numbers
import operator

import torch


def check_int(value: object, name: str, *, minimum: int | None = None) -> int:
    """``value`` as an ``int`` of at least ``minimum``; bools, floats and strings are refused."""
    expected = "an integer" + ("" if minimum is None else f" >= {minimum}")
    if isinstance(value, bool):
        raise TypeError(f"{name} must be {expected}, got {value!r}")
    try:
        out = operator.index(value)
    except TypeError as err:
        raise TypeError(f"{name} must be {expected}, got {value!r}") from err
    if minimum is not None and out < minimum:
        raise ValueError(f"{name} must be {expected}, got {out}")
    return out


def check_number(value: object, name: str, *, positive: bool) -> float:
    """``value`` as a finite ``float``, ``> 0`` when ``positive`` else ``>= 0``."""
    expected = "a finite number " + ("> 0" if positive else ">= 0")
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be {expected}, got {value!r}")
    out = float(value)
    if not math.isfinite(out) or out < 0 or (positive and out == 0):
        raise ValueError(f"{name} must be {expected}, got {value!r}")
    return out


def check_bool(value: object, name: str) -> bool:
    """``value`` when it is ``True`` or ``False``."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return value


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
