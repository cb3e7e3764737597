"""Checkpoint and resume for Avalanche strategies: a safe default, and the whole-strategy pickle.

``save_checkpoint(strategy, path)`` writes neve's default format: the model's,
optimizer's and plugins' ``state_dict`` s, the clock, the RNG states and the
evaluator's results as tensors and plain data (:mod:`neve.plugins.strategy_state`),
in a file that loads with ``torch.load(weights_only=True)`` and carries a SHA-256
of its contents (:mod:`neve.plugins.state_file`). ``maybe_load_checkpoint``
restores it into a strategy built the same way, after checking the file's
integrity, classes, settings and shapes (:mod:`neve.plugins.checkpoint_match`);
any problem is one :class:`CheckpointError` and the strategy is left as it was.
State that has no such form (Avalanche's ``ReplayPlugin`` buffer, EWC's
importances) is refused at save with a ValueError naming it.

``format="pickle"`` (both functions) is Avalanche 0.6.0's whole-strategy dill
pickle: it stores anything, but **loading such a file runs code from it**, as
any pickle can: load only files you wrote or trust.

That pickle needs a fix under torch >= 2.x, where Avalanche's ``save_checkpoint``
fails (``PicklingError: Can't pickle sentinel ... typing_extensions.sentinel``
with typing_extensions 4.16, ``Can't pickle <class 'PyCapsule'>`` with 4.15,
whatever the dill version). The cause: dill decides whether a class can be
pickled by reference with ``_import_module(cls.__module__)``, which walks the
dotted path with ``getattr`` on each parent package. ``torch/optim/__init__.py``
deletes its submodule attributes after importing them (``del sgd, adam, ...``),
so ``torch.optim.sgd`` is in ``sys.modules`` but not an attribute of
``torch.optim``. dill concludes that ``torch.optim.sgd.SGD`` cannot be found by
name and pickles the optimizer *class* by value: its methods, their globals, and
eventually typing_extensions internals that cannot be pickled at all. The fix is
at the cause: :func:`restore_submodule_attributes` puts every imported ``torch``
submodule back as an attribute of its parent package (what the import system
does on first import anyway), and then classes pickle by reference as they
should. Importing :mod:`neve.plugins` applies it, so Avalanche's own
``avalanche.checkpointing`` functions work too; the ``"pickle"`` format here
applies it again right before pickling (for modules imported later).
"""

from __future__ import annotations

import copy
import os
import sys
from typing import TypeVar

import torch
from avalanche.checkpointing import maybe_load_checkpoint as avalanche_load
from avalanche.checkpointing import save_checkpoint as avalanche_save

from ..models.distributed import is_distributed, raise_everywhere, rank_and_world
from .checkpoint_match import class_problems, setting_problems, shape_problems
from .state_file import CheckpointError, damaged, read_state_file, write_state_file
from .strategy_state import load_strategy_state, strategy_state

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


def save_checkpoint(strategy, path: str | os.PathLike, *, format: str = "state") -> None:
    """Save ``strategy`` to ``path``; call it between experiences, never inside ``train``/``eval``.

    Args:
        format: ``"state"`` (default): neve's format of tensors and plain data
            with a SHA-256 (see the module docstring). ``"pickle"``: Avalanche's
            dill pickle of the whole strategy; loading it runs code from the file.

    Under ``torch.distributed`` every process calls it with the same ``path``;
    rank 0 alone writes the file (on a file system that every process reads at
    resume) and every process returns once it is written, or raises when rank 0
    could not write it. Every process resumes from rank 0's state: the model,
    the optimizer and neve's statistics are the same in every process, and the
    RNG states are rank 0's.

    Raises:
        ValueError: ``format="state"`` and a plugin, metric, optimizer or attribute
            holds state that the format cannot store (named in the message);
            nothing is written.
    """
    if format not in ("state", "pickle"):
        raise ValueError(f"format must be 'state' or 'pickle', got {format!r}")
    rank, _ = rank_and_world()
    error = None
    if rank == 0:
        try:
            if format == "pickle":
                restore_submodule_attributes()
                avalanche_save(strategy, path)
            else:
                write_state_file(path, strategy_state(strategy))
        except Exception as err:  # noqa: BLE001 - raised again below, on every process
            error = err
    raise_everywhere(error, f"rank 0 could not write the checkpoint {os.fspath(path)} "
                     "(see its error)")


def process_map_location() -> dict[str, str] | None:
    """``map_location`` that puts every saved CUDA tensor on this process's current GPU.

    None (tensors where they were saved) in one process or without CUDA; under
    ``torch.distributed``, ``{"cuda:i": "cuda:<current>"}`` for every GPU index
    ``i`` of this node.
    """
    if not (is_distributed() and torch.cuda.is_available()):
        return None
    here = f"cuda:{torch.cuda.current_device()}"
    return {f"cuda:{i}": here for i in range(torch.cuda.device_count())}


def maybe_load_checkpoint(
    strategy: T,
    path: str | os.PathLike,
    map_location: str | torch.device | None = None,
    *,
    format: str = "state",
    override: bool = False,
) -> tuple[T, int]:
    """Restore ``strategy`` from ``path`` if it exists.

    ``strategy`` must be built as the saved one was (same classes, plugins,
    metrics and settings); the file's state then replaces its state.

    Args:
        map_location: where the file's tensors go, as for ``torch.load``. Default
            None: where they were saved; under ``torch.distributed`` with CUDA, every
            saved CUDA tensor goes to this process's current GPU
            (:func:`process_map_location`; rank 0 wrote the file from its own GPU).
        format: ``"state"`` (default) or ``"pickle"`` (Avalanche's dill pickle:
            runs code from the file, for files you trust only), as saved.
        override: take the file's settings where they differ from ``strategy``'s
            (e.g. ``gamma``, ``train_mb_size``, the optimizer's ``lr``) instead of
            refusing. Shapes and classes must match all the same.

    Returns:
        ``(strategy, next_experience)``: the index of the first training
        experience not yet seen (0 when there is no checkpoint).

    Raises:
        CheckpointError: the file is damaged or not a neve checkpoint, or it is
            for another strategy class, other plugins, other shapes or (without
            ``override``) other settings, or restoring failed. ``strategy`` is
            then as it was.
    """
    if format == "pickle":
        restore_submodule_attributes()
        return avalanche_load(strategy, path, map_location=map_location)
    if format != "state":
        raise ValueError(f"format must be 'state' or 'pickle', got {format!r}")
    if not os.path.exists(path):
        return strategy, 0
    if map_location is None:
        map_location = process_map_location()
    state = read_state_file(path, map_location)
    try:
        _check_fit(strategy, state, path, override=override)
        backup = copy.deepcopy(strategy_state(strategy))
    except (KeyError, TypeError, AttributeError) as error:
        raise damaged(path, f"unexpected contents: {type(error).__name__} {error}") from None
    except CheckpointError:
        raise
    except ValueError as error:  # this strategy holds state the format cannot store
        message = f"cannot load {os.fspath(path)} into this strategy: {error}"
        raise CheckpointError(message) from None
    try:
        load_strategy_state(strategy, state, override=override)
    except Exception as error:
        try:
            load_strategy_state(strategy, backup, override=True)
        except Exception as second:  # noqa: BLE001
            raise CheckpointError(
                f"checkpoint {os.fspath(path)} could not be restored ({type(error).__name__}: "
                f"{error}), nor the strategy's own state put back ({second}): rebuild it"
            ) from error
        raise CheckpointError(
            f"checkpoint {os.fspath(path)} could not be restored ({type(error).__name__}: "
            f"{error}); the strategy was left as it was"
        ) from error
    return strategy, int(state["next_experience"])


def _check_fit(strategy, state: dict, path: str | os.PathLike, *, override: bool) -> None:
    """Raise one CheckpointError listing what in ``state`` does not fit ``strategy``."""
    where = f"checkpoint {os.fspath(path)} does not fit this strategy: "
    problems = class_problems(strategy, state)
    if problems:
        raise CheckpointError(where + "; ".join(problems))
    saved = state["model"]
    problems = shape_problems(strategy.model, saved["state"], saved.get("unset", ()))
    settings = [] if override else setting_problems(strategy, state)
    if problems or settings:
        advice = (". Build the strategy with the file's settings, or pass override=True to "
                  "take the file's values" if settings else "")
        raise CheckpointError(where + "; ".join(problems + settings) + advice)
