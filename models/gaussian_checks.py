"""Checks of what reaches :class:`neve.models.gaussians.ClassGaussianStats` from outside.

Its inputs (features and targets to store) and a stored state (from a file):
pure functions that raise a ValueError/TypeError naming the argument or entry;
they change nothing, so the statistics are only touched after every check passed.
"""

from __future__ import annotations

import torch

from .core.checks import Int, OneOf, Real
from .core.data_checks import check_features, check_labels

COVARIANCE_KINDS = ("full", "diagonal", "shared")


COVARIANCE = OneOf(*COVARIANCE_KINDS)
RIDGE = Real(gt=0.0)
GROUP = Int(min=0)


def check_update_inputs(
    features: object, targets: object, group: object, columns: int | None
) -> None:
    """Checks of ``ClassGaussianStats.update``'s arguments (``columns``: the stored D).

    Features ``[N >= 1, D]`` finite floating point (``D = columns`` once stored), targets
    by neve's one label rule with ``N`` entries, ``group`` an integer >= 0.
    """
    features = check_features(features, "features", dim=columns)
    if features.shape[0] < 1 or features.shape[1] < 1:
        raise ValueError(f"features must be [N >= 1, D >= 1], got {tuple(features.shape)}")
    check_labels(targets, "targets", n=features.shape[0])
    GROUP.check(group, "group")


def _tensor_dict(state: dict, key: str) -> dict[int, torch.Tensor]:
    value = state.get(key, {})
    if not isinstance(value, dict):
        raise ValueError(f"state[{key!r}] must be a dict class -> tensor, got {type(value)}")
    out = {}
    for c, t in value.items():
        if not isinstance(t, torch.Tensor) or not bool(torch.isfinite(t).all()):
            raise ValueError(f"state[{key!r}][{c!r}] must be a finite tensor")
        out[int(c)] = t.detach().to(torch.float64).clone()
    return out


def _int_dict(state: dict, key: str, low: int) -> dict[int, int]:
    value = state.get(key)
    if not isinstance(value, dict):
        raise ValueError(f"state[{key!r}] must be a dict class -> int, got {type(value)}")
    if any(isinstance(v, bool) or not isinstance(v, int) or v < low for v in value.values()):
        raise ValueError(f"state[{key!r}] must hold ints >= {low}, got {value!r}")
    return {int(c): int(v) for c, v in value.items()}


def checked_state(state: object) -> dict:
    """A validated, converted copy of a ``ClassGaussianStats.state_dict()``.

    Raises a ValueError naming the first bad entry; the input is not modified.
    """
    required = ("covariance", "ridge", "means", "counts", "groups")
    if not isinstance(state, dict) or any(k not in state for k in required):
        raise ValueError(f"state must be a ClassGaussianStats.state_dict() with keys {required}")
    kind = COVARIANCE.check(state["covariance"], "state['covariance']")
    ridge = RIDGE.check(state["ridge"], "state['ridge']")
    means = _tensor_dict(state, "means")
    counts, groups = _int_dict(state, "counts", 1), _int_dict(state, "groups", 0)
    scatters = _tensor_dict(state, "scatters")
    low_rank = _tensor_dict(state, "low_rank")
    classes = set(means)
    for key, part in (("counts", counts), ("groups", groups), ("scatters", scatters)):
        if set(part) != classes:
            raise ValueError(f"state[{key!r}] must have the classes of state['means']")
    if not set(low_rank) <= classes or (low_rank and kind != "full"):
        raise ValueError("state['low_rank'] must only hold classes of full statistics")
    dims = {m.shape for m in means.values()}
    if len(dims) > 1 or any(len(s) != 1 for s in dims):
        raise ValueError(f"state['means'] must all be [D], got shapes {sorted(dims)}")
    for c in classes:
        d = means[c].shape[0]
        shape = (d,) if kind == "diagonal" else (d, d)
        if tuple(scatters[c].shape) != shape:
            raise ValueError(f"state['scatters'][{c}] must be {shape}, got "
                             f"{tuple(scatters[c].shape)}")
        if c in low_rank and (low_rank[c].dim() != 2 or low_rank[c].shape[1] != d):
            raise ValueError(f"state['low_rank'][{c}] must be [rows, {d}]")
    return {"covariance": kind, "ridge": ridge, "means": means, "scatters": scatters,
            "low_rank": low_rank, "counts": counts, "groups": groups}
