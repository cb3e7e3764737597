"""SLCA's slow learner as optimizer parameter groups (Zhang et al., ICCV 2023, Sec. 4.1).

The representation learns ``backbone_lr_scale`` times slower than the classifier:
:func:`split_param_groups` turns each optimizer group into a (head, backbone)
pair whose backbone member's rates are the head member's times the scale
(:func:`scale_backbone_rates`).
"""

from __future__ import annotations

import torch
from torch import nn

#: Keys neve adds to an optimizer's param_groups (torch keeps extra keys).
ROLE = "neve_slow_learner_role"
PAIR = "neve_slow_learner_pair"

#: Per-group rates a learning rate follows: ``lr``, and those torch LR schedulers
#: store in the groups (every scheduler: ``initial_lr``; ``OneCycleLR``: ``max_lr``,
#: ``min_lr``).
RATE_KEYS = ("lr", "initial_lr", "max_lr", "min_lr")


def scale_backbone_rates(head_group: dict, backbone_group: dict, scale: float) -> None:
    """Set each rate of :data:`RATE_KEYS` that ``head_group`` has to its value times
    ``scale`` in ``backbone_group``, so a scheduler built before the split, or after,
    drives the backbone at ``scale`` times the head's rate."""
    for key in RATE_KEYS:
        if key in head_group:
            backbone_group[key] = head_group[key] * scale


def split_param_groups(
    optimizer: torch.optim.Optimizer, head_params: list[nn.Parameter], backbone_lr_scale: float
) -> None:
    """Put head and non-head parameters in separate groups; backbone rates = head's x scale.

    SLCA Sec. 4.1 (slow learner): the representation gets a learning rate
    ``backbone_lr_scale`` times the classifier's. Each of the optimizer's groups
    ``g`` (any optimizer class; all its hyper-parameters kept) becomes a pair:
    a head group with ``g``'s rates and a representation group with ``g``'s rates
    times ``backbone_lr_scale`` (:func:`scale_backbone_rates`: ``lr`` and the
    schedulers' ``initial_lr``, ``max_lr``, ``min_lr``). On later calls the pairs
    are kept, their backbone rates set again from the head's, and parameters
    that sit in the wrong member of a pair (e.g. added by Avalanche's
    ``update_optimizer``) are moved; unpaired groups (added since) are split.
    Optimizer state (momentum, Adam moments) is keyed by parameter and survives.

    Precondition: ``backbone_lr_scale >= 0``. Raises ``ValueError`` for a pair
    missing one of its members.
    """
    head_ids = {id(p) for p in head_params}
    pairs: dict[int, dict[str, dict]] = {}
    unpaired = []
    for group in optimizer.param_groups:
        if PAIR in group:
            pairs.setdefault(group[PAIR], {})[group[ROLE]] = group
        else:
            unpaired.append(group)
    new_groups = []
    for index in sorted(pairs):
        head_group, backbone_group = pairs[index].get("head"), pairs[index].get("backbone")
        if head_group is None or backbone_group is None:
            raise ValueError("optimizer param_groups carry a broken slow-learner pair")
        new_groups += [head_group, backbone_group]
    next_index = max(pairs, default=-1) + 1
    for group in unpaired:
        hyper = {k: v for k, v in group.items() if k != "params"}
        head_group = dict(hyper, params=list(group["params"]), **{PAIR: next_index, ROLE: "head"})
        backbone_group = dict(hyper, params=[], **{PAIR: next_index, ROLE: "backbone"})
        next_index += 1
        new_groups += [head_group, backbone_group]
    for head_group, backbone_group in zip(new_groups[::2], new_groups[1::2], strict=True):
        params = list(head_group["params"]) + list(backbone_group["params"])
        head_group["params"] = [p for p in params if id(p) in head_ids]
        backbone_group["params"] = [p for p in params if id(p) not in head_ids]
        scale_backbone_rates(head_group, backbone_group, backbone_lr_scale)
    optimizer.param_groups[:] = new_groups
