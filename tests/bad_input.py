"""Shared check for the table-driven bad-input tests (issue #12).

``assert_refused(call, argument, state=...)`` runs ``call()`` and asserts that it
raises a ValueError or TypeError whose message names ``argument``, and that the
state captured by ``state()`` (a ``state_dict``-like mapping, compared tensor by
tensor) is the same before and after.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping

import pytest
import torch


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return a.shape == b.shape and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


def snapshot(state: Callable[[], object] | None):
    """A deep copy of ``state()`` (None when no state is given)."""
    return None if state is None else copy.deepcopy(state())


def assert_refused(
    call: Callable[[], object],
    argument: str,
    state: Callable[[], object] | None = None,
    errors: tuple[type[BaseException], ...] = (ValueError, TypeError),
) -> None:
    """``call()`` raises one of ``errors`` naming ``argument``; ``state()`` is unchanged."""
    before = snapshot(state)
    with pytest.raises(errors) as info:
        call()
    assert argument in str(info.value), f"the error does not name {argument!r}: {info.value}"
    if state is not None:
        assert _same(before, state()), f"state changed after refusing {argument!r}"
