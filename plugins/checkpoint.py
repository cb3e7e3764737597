"""Checkpoint and resume for Avalanche strategies under current torch.

Avalanche 0.6.0's ``save_checkpoint`` pickles the whole strategy with dill, and
with torch >= 2.x it fails (``PicklingError: Can't pickle sentinel ...
typing_extensions.sentinel`` with typing_extensions 4.16, ``Can't pickle
<class 'PyCapsule'>`` with 4.15, whatever the dill version).

The cause: dill decides whether a class can be pickled by reference with
``_import_module(cls.__module__)``, which walks the dotted path with ``getattr``
on each parent package. ``torch/optim/__init__.py`` deletes its submodule
attributes after importing them (``del sgd, adam, ...``), so ``torch.optim.sgd``
is in ``sys.modules`` but not an attribute of ``torch.optim``. dill concludes
that ``torch.optim.sgd.SGD`` cannot be found by name and pickles the optimizer
*class* by value: its methods, their globals, and eventually typing_extensions
internals that cannot be pickled at all.

The fix is at the cause: :func:`restore_submodule_attributes` puts every
imported ``torch`` submodule back as an attribute of its parent package (what
the import system does on first import anyway), and then classes pickle by
reference as they should. Importing :mod:`neve.plugins` applies it, so
Avalanche's own ``avalanche.checkpointing.save_checkpoint`` and
``maybe_load_checkpoint`` work; :func:`save_checkpoint` and
:func:`maybe_load_checkpoint` here apply it again right before pickling (for
modules imported later) and then call Avalanche's.

Plugin state is saved with the strategy, since dill pickles the plugins in
``strategy.plugins`` with everything they hold; RNG states are saved by
Avalanche's ``RNGManager``.
"""

from __future__ import annotations

import os
import sys
from typing import TypeVar

import torch

T = TypeVar("T")


def restore_submodule_attributes(packages: tuple[str, ...] = ("torch",)) -> list[str]:
    """Make each imported submodule of ``packages`` an attribute of its parent package.

    Returns:
        The dotted names of the submodules that were re-attached.
    """
    restored = []
    for name, module in list(sys.modules.items()):
        if module is None or "." not in name or not name.startswith(packages):
            continue
        parent_name, _, child = name.rpartition(".")
        parent = sys.modules.get(parent_name)
        if parent is not None and not hasattr(parent, child):
            setattr(parent, child, module)
            restored.append(name)
    return restored


def save_checkpoint(strategy, path: str | os.PathLike) -> None:
    """Save ``strategy`` (model, optimizer, clock, plugins, RNG states) to ``path``.

    Same shape as ``avalanche.checkpointing.save_checkpoint``; call it between
    experiences, never inside ``train``/``eval``.
    """
    from avalanche.checkpointing import save_checkpoint as avalanche_save

    restore_submodule_attributes()
    avalanche_save(strategy, path)


def maybe_load_checkpoint(
    strategy: T, path: str | os.PathLike, map_location: str | torch.device | None = None
) -> tuple[T, int]:
    """Restore ``strategy`` from ``path`` if it exists.

    Returns:
        ``(strategy, next_experience)``: the index of the first training
        experience not yet seen (0 when there is no checkpoint).
    """
    from avalanche.checkpointing import maybe_load_checkpoint as avalanche_load

    restore_submodule_attributes()
    return avalanche_load(strategy, path, map_location=map_location)
