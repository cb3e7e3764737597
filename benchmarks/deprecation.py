"""Renamed keyword arguments: the old name keeps working, with a FutureWarning."""

from __future__ import annotations

import warnings
from typing import Any, Final


class _NotGiven:
    """Type of :data:`NOT_GIVEN`, the default of a deprecated keyword."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "<not given>"


NOT_GIVEN: Final = _NotGiven()


def warn_renamed(old: str, new: str, stacklevel: int = 3) -> None:
    """FutureWarning: ``old`` is deprecated, use ``new`` (``stacklevel`` 3: the caller's caller)."""
    warnings.warn(
        f"{old} is deprecated and will be removed; use {new} instead",
        FutureWarning,
        stacklevel=stacklevel,
    )


def renamed_keyword(
    value: Any, old_value: Any, *, new: str, old: str, default: Any, stacklevel: int = 3
) -> Any:
    """``value`` of keyword ``new``, or ``old_value`` when the deprecated ``old`` was given.

    Args:
        value: the value of the new keyword.
        old_value: the value of the deprecated keyword, :data:`NOT_GIVEN` if absent.
        new, old: the two keyword names, for the messages.
        default: the new keyword's default; a different ``value`` together with
            ``old_value`` is a conflict.
        stacklevel: passed to :func:`warnings.warn` (3: the caller's caller).

    Raises:
        TypeError: both keywords were given.
    """
    if old_value is NOT_GIVEN:
        return value
    warn_renamed(f"{old}=", f"{new}=", stacklevel + 1)
    if value != default:
        raise TypeError(f"give {new}= only, not also the deprecated {old}=")
    return old_value
