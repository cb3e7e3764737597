"""Checks of a :class:`~neve.plugins.CurriculumEffectiveness` state before it is loaded."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np


def parse_curriculum_state(state) -> tuple[int, dict[str, float], dict]:
    """``(trained_upto, first_after_learning, rows)`` of a ``state_dict()`` mapping, as plain
    numbers; a ValueError names the first field that is not what a save writes."""
    if not isinstance(state, Mapping) or not {
        "trained_upto",
        "first_after_learning",
        "rows",
    } <= set(state):
        raise ValueError(
            "state must be a CurriculumEffectiveness.state_dict() mapping with "
            "trained_upto, first_after_learning and rows"
        )
    trained_upto = _index(state["trained_upto"], "trained_upto", minimum=-1)
    first = {
        _name(s, "first_after_learning"): _fraction(a, "first_after_learning")
        for s, a in _items(state["first_after_learning"], "first_after_learning")
    }
    rows = {
        _name(s, "rows"): {
            _index(i, "rows"): {
                _index(j, "rows"): _fraction(a, "rows") for j, a in _items(r, "rows")
            }
            for i, r in _items(srows, "rows")
        }
        for s, srows in _items(state["rows"], "rows")
    }
    return trained_upto, first, rows


def _items(mapping, name: str):
    if not isinstance(mapping, Mapping):
        raise ValueError(f"state's {name} must be a mapping, got {type(mapping).__name__}")
    return mapping.items()


def _name(value, name: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"state's {name} must be keyed by stream names, got {value!r}")
    return value


def _index(value, name: str, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"state's {name} must hold integers >= {minimum}, got {value!r}")
    return int(value)


def _fraction(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating)):
        raise ValueError(f"state's {name} must hold accuracies in [0, 1], got {value!r}")
    if not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"state's {name} must hold accuracies in [0, 1], got {value!r}")
    return float(value)
