"""Helpers of :class:`~neve.plugins.SlowLearnerPlugin`: backbone modes, current classes, head rows.

Pure functions on modules; no Avalanche state. :func:`backbone_to_eval` /
:func:`restore_modes` put the representation (every module outside the head
and its parents) in eval mode and back; :func:`experience_classes` reads an
experience's classes; :func:`init_class_rows` re-draws the head rows of new
classes as the SLCA authors' per-task linear heads are drawn.
"""

from __future__ import annotations

import torch
from torch import nn


def experience_classes(experience) -> list[int]:
    """The classes of an experience, ascending.

    ``experience.classes_in_this_experience`` where the benchmark has a class
    timeline; otherwise (Avalanche's ``benchmark_from_datasets``,
    ``split_online_stream``) the distinct targets of ``experience.dataset``.
    """
    classes = getattr(experience, "classes_in_this_experience", None)
    if classes is None:
        targets = experience.dataset.targets
        uniques = getattr(targets, "uniques", None)
        classes = uniques if uniques is not None else set(torch.as_tensor(targets).tolist())
    return sorted(int(c) for c in classes)


def backbone_modules(model: nn.Module, head: nn.Module) -> list[nn.Module]:
    """The modules of ``model`` outside ``head`` that do not contain ``head`` (its parents)."""
    inside = set(head.modules())
    parents = {m for m in model.modules() if any(c is head for c in m.modules())}
    return [m for m in model.modules() if m not in inside and m not in parents]


def backbone_to_eval(model: nn.Module, head: nn.Module) -> dict[nn.Module, bool]:
    """Put the representation (see :func:`backbone_modules`) in eval mode.

    Batch norm then normalises with its running statistics and leaves them as
    they are; dropout and stochastic depth (drop-connect) are off. Gradients
    still flow, so the representation's weights keep learning. The head and its
    parents keep their mode.

    Returns:
        Each module changed and its previous ``training`` flag, for :func:`restore_modes`.
    """
    changed = {}
    for module in backbone_modules(model, head):
        if module.training:
            changed[module] = True
            module.training = False
    return changed


def restore_modes(changed: dict[nn.Module, bool]) -> None:
    """Undo :func:`backbone_to_eval`."""
    for module, training in changed.items():
        module.training = training


@torch.no_grad()
def init_class_rows(head: nn.Module, classes: list[int], std: float,
                    generator: torch.Generator) -> None:
    """Re-draw the head rows of ``classes`` (its last ``nn.Linear``): weight ~ TN(0, std), bias 0.

    The SLCA authors give each task a new linear head with ``trunc_normal_(std=0.02)``
    weights and zero bias; with Avalanche's single ``IncrementalClassifier``
    matrix, this draws the new classes' rows the same way (truncated at +-2, as
    ``torch.nn.init.trunc_normal_``'s default), ``[len(classes), D]`` in the
    order given, from ``generator``.
    """
    linears = [m for m in head.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError("head_init needs an nn.Linear in the head, found none")
    linear = linears[-1]
    if classes and max(classes) >= linear.out_features:
        raise ValueError(f"head has {linear.out_features} outputs, classes {classes} need more")
    rows = torch.empty(len(classes), linear.in_features)
    torch.nn.init.trunc_normal_(rows, std=std, generator=generator)
    index = torch.tensor(classes, dtype=torch.long, device=linear.weight.device)
    linear.weight.index_copy_(0, index, rows.to(linear.weight))
    if linear.bias is not None:
        linear.bias.index_fill_(0, index, 0.0)
