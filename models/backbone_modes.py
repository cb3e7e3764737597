"""The representation's train/eval modes, apart from the head: pure functions on modules.

:func:`backbone_to_eval` puts every module outside the head and its parents in
eval mode (batch norm on running statistics, dropout and drop-connect off) while
gradients still flow; :func:`restore_modes` puts them back. Used by
:class:`~neve.plugins.SlowLearnerPlugin`.
"""

from __future__ import annotations

from torch import nn


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
