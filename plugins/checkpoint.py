"""Checkpoint and resume for Avalanche strategies: a safe default, and the whole-strategy pickle.

``save_checkpoint(strategy, path)`` writes every component's state as tensors and
plain data (:mod:`~neve.plugins.checkpoint_state`) with what the file must match,
in a file that loads with ``torch.load(weights_only=True)`` and carries a SHA-256
of its contents (:mod:`~neve.plugins.checkpoint_file`). ``maybe_load_checkpoint``
restores it into a strategy built the same way, after checking the file's
integrity and fields, the classes, shapes and *settings*: what each component
declares in a class attribute ``checkpointed`` (attribute names; a strategy
without one: :data:`STRATEGY_SETTINGS`), and the optimizer's ``defaults``. Any
problem is one :class:`CheckpointError` and the strategy is left as it was.

``format="pickle"`` is Avalanche 0.6.0's dill pickle of the whole strategy: it
stores anything, but **loading such a file runs code from it**. Under torch >= 2.x
it fails because ``torch/optim/__init__.py`` deletes its submodule attributes, so
dill pickles the optimizer *class* by value; :func:`restore_submodule_attributes`
(applied on import of :mod:`neve.plugins` and before pickling) puts them back.
"""

from __future__ import annotations

import copy
import os
import sys
from typing import TypeVar

import torch
from avalanche.checkpointing import maybe_load_checkpoint as avalanche_load
from avalanche.checkpointing import save_checkpoint as avalanche_save
from torch import nn

from ..models.core.distributed import default_reduction, is_distributed, rank_and_world
from . import checkpoint_file as files
from . import checkpoint_state as states
from .checkpoint_file import CheckpointError

#: Settings of a strategy that declares none.
STRATEGY_SETTINGS = ("train_mb_size", "train_epochs", "eval_mb_size")
T = TypeVar("T")


def restore_submodule_attributes(packages: tuple[str, ...] = ("torch",)) -> list[str]:
    """Make each imported submodule of ``packages`` an attribute of its parent; returns them."""
    restored = []
    for name, module in list(sys.modules.items()):
        parent, child = sys.modules.get(name.rpartition(".")[0]), name.rpartition(".")[2]
        if module is not None and name.startswith(packages) and "." in name \
                and parent is not None and not hasattr(parent, child):
            setattr(parent, child, module)
            restored.append(name)
    return restored


def save_checkpoint(strategy, path: str | os.PathLike, *, format: str = "state") -> None:
    """Save ``strategy`` to ``path``; call it between experiences, never inside ``train``/``eval``.

    ``format``: ``"state"`` (neve's, see the module docstring) or ``"pickle"``.
    Under ``torch.distributed`` every process calls it with the same ``path``; rank 0
    alone writes (every process resumes from its state), and every process returns
    once the file is written, or raises when rank 0 could not write it.

    Raises:
        ValueError: a component holds state that the format cannot store (named).
        OSError: the file cannot be written (naming it and the cause); a previous
            file at ``path`` is left whole.
    """
    if format not in ("state", "pickle"):
        raise ValueError(f"format must be 'state' or 'pickle', got {format!r}")
    error = None
    if rank_and_world()[0] == 0:
        try:
            if format == "pickle":
                restore_submodule_attributes()
                avalanche_save(strategy, path)
            else:
                files.write_checkpoint_file(path, states.strategy_state(
                    strategy, strategy_settings(strategy)))
        except Exception as err:  # noqa: BLE001 - raised again below, on every process
            error = err
    default_reduction().agree(error, f"rank 0 could not write the checkpoint {os.fspath(path)}"
                              " (see its error)")


def process_map_location() -> dict[str, str] | None:
    """Under ``torch.distributed`` with CUDA, ``{"cuda:i": "cuda:<current>"}`` for every GPU
    of this node (rank 0 wrote from its own GPU); else None (where they were saved)."""
    if is_distributed() and torch.cuda.is_available():
        here = f"cuda:{torch.cuda.current_device()}"
        return {f"cuda:{i}": here for i in range(torch.cuda.device_count())}
    return None


def maybe_load_checkpoint(strategy: T, path: str | os.PathLike,
                          map_location: str | torch.device | None = None, *,
                          format: str = "state", override: bool = False) -> tuple[T, int]:
    """Restore ``strategy`` (built as the saved one was) from ``path`` if it exists.

    ``map_location`` as for ``torch.load`` (default :func:`process_map_location`);
    ``format`` as saved (``"pickle"`` runs code from the file); ``override``: take the
    file's settings where they differ (e.g. ``gamma``, the optimizer's ``lr``) instead
    of refusing (classes and shapes must match all the same). Returns ``(strategy,
    next_experience)``, the first training experience not yet seen (0 without file).

    Raises:
        CheckpointError: the file is damaged, not a neve checkpoint, or does not fit
            (classes, shapes, settings), or restoring failed; ``strategy`` is as it was.
    """
    if format == "pickle":
        restore_submodule_attributes()
        return avalanche_load(strategy, path, map_location=map_location)
    if format != "state":
        raise ValueError(f"format must be 'state' or 'pickle', got {format!r}")
    if not os.path.exists(path):
        return strategy, 0
    state = files.read_checkpoint_file(path, map_location or process_map_location())
    try:
        files.check_fields(state)
        _check_fit(strategy, state, path, override=override)
        backup = copy.deepcopy(states.strategy_state(strategy, strategy_settings(strategy)))
    except (KeyError, TypeError, AttributeError) as error:
        raise files.damaged_file_error(path, f"unexpected contents: {type(error).__name__} "
                                       f"{error}") from None
    except ValueError as error:  # state of this strategy that the format cannot store
        if isinstance(error, CheckpointError):
            raise
        raise CheckpointError(f"cannot load {os.fspath(path)} into this strategy: {error}") \
            from None
    try:
        if override:
            take_settings(strategy, state["settings"])
        states.load_strategy_state(strategy, state)
    except Exception as error:
        why = f"checkpoint {os.fspath(path)} could not be restored ({type(error).__name__}: " \
              f"{error})"
        try:
            take_settings(strategy, backup["settings"])
            states.load_strategy_state(strategy, backup)
        except Exception as second:  # noqa: BLE001
            raise CheckpointError(f"{why}, nor the strategy's own state put back ({second}): "
                                  "rebuild it") from error
        raise CheckpointError(f"{why}; the strategy was left as it was") from error
    return strategy, state["next_experience"]


# ------------------------------------------------------------- what a file must match
def _check_fit(strategy, state: dict, path: str | os.PathLike, *, override: bool) -> None:
    """Raise one CheckpointError listing what in ``state`` does not fit ``strategy``."""
    where = f"checkpoint {os.fspath(path)} does not fit this strategy: "
    problems = class_problems(strategy, state)
    if problems:
        raise CheckpointError(where + "; ".join(problems))
    problems = shape_problems(strategy.model, state["model"])
    settings = [] if override else setting_problems(strategy, state["settings"])
    if problems or settings:
        advice = (". Build the strategy with the file's settings, or pass override=True to "
                  "take the file's values" if settings else "")
        raise CheckpointError(where + "; ".join(problems + settings) + advice)


def settings_owners(strategy) -> list[tuple[str, object]]:
    """``(owner name, object)``: the strategy, model modules, plugins and metrics."""
    owners = [(type(strategy).__name__, strategy)]
    owners += [(f"model.{name}".rstrip("."), m) for name, m in strategy.model.named_modules()]
    for obj in [*strategy.plugins, *getattr(strategy.evaluator, "metrics", [])]:
        name = type(obj).__name__
        owners.append((name if name not in dict(owners) else f"{name}#{len(owners)}", obj))
    return owners


def strategy_settings(strategy) -> dict[str, dict]:
    """``{owner: {name: value}}``: each component's declared settings, the optimizer's defaults."""
    settings = {}
    for owner, obj in settings_owners(strategy):
        names = getattr(type(obj), "checkpointed", STRATEGY_SETTINGS if obj is strategy else ())
        values = {n: getattr(obj, n) for n in names
                  if isinstance(getattr(obj, n, None), files.SCALARS)}
        if values:
            settings[owner] = values
    if getattr(strategy, "optimizer", None) is not None:
        settings["optimizer"] = {k: v for k, v in strategy.optimizer.defaults.items()
                                 if isinstance(v, files.SCALARS)}
    return settings


def _same(a: object, b: object) -> bool:
    """Equal and of one type, or two numbers (not bools) that are equal."""
    return a == b and (type(a) is type(b) or {type(a), type(b)} <= {int, float})


def setting_problems(strategy, saved: dict) -> list[str]:
    """Declared settings that differ between ``strategy`` and the file's."""
    here = strategy_settings(strategy)
    return [f"{owner}.{name}: {here[owner][name]!r} asked, {value!r} in the file"
            for owner, values in saved.items() for name, value in sorted(values.items())
            if name in here.get(owner, {}) and not _same(here[owner][name], value)]


def take_settings(strategy, saved: dict) -> None:
    """Set the file's declared settings on ``strategy``'s components (``override=True``)."""
    for owner, obj in settings_owners(strategy):
        for name, value in saved.get(owner, {}).items():
            if not isinstance(getattr(type(obj), name, None), property):
                setattr(obj, name, value)
    if getattr(strategy, "optimizer", None) is not None:
        strategy.optimizer.defaults.update(saved.get("optimizer", {}))


def class_problems(strategy, payload: dict) -> list[str]:
    """Differences in the classes of strategy, plugins (and their parts), metrics, optimizer."""
    name, problems = states.class_name, []
    if payload["strategy_class"] != name(strategy):
        problems.append(f"the file is for a {payload['strategy_class']}, this strategy is a "
                        f"{name(strategy)}")
    for what, here, there in (
        ("plugins", [name(p) for p in strategy.plugins], [p["class"] for p in payload["plugins"]]),
        ("evaluator metrics", [name(m) for m in getattr(strategy.evaluator, "metrics", [])],
         payload["metric_classes"]),
        ("optimizer", [name(getattr(strategy, "optimizer", None))],
         [None if payload["optimizer"] is None else payload["optimizer"]["class"]]),
    ):
        if here != there:
            problems.append(f"{what}: this strategy has {here}, the file {there}")
    for plugin, entry in zip(strategy.plugins, payload["plugins"], strict=not problems):
        adapter = states.adapter_of(plugin)
        mine = {n: name(p) for n, p in adapter[2](plugin).items()} if adapter else {}
        problems += [f"{type(plugin).__name__}.{part}: this strategy has {mine.get(part)}, the "
                     f"file {theirs}" for part, theirs in entry.get("parts", {}).items()
                     if mine.get(part) != theirs]
    return problems


def shape_problems(model: nn.Module, saved: dict) -> list[str]:
    """Tensors of the model missing, extra or of another shape than in the file's model.

    Modules inside ``DynamicModule`` s and modules that resize themselves (their class
    overrides ``_load_from_state_dict``) may differ in shape.
    """
    own, tensors = model.state_dict(), saved["state"]
    missing = sorted(own.keys() - tensors.keys() - set(saved.get("unset", ())))
    extra = sorted(k for k in tensors.keys() - own.keys() if not states.is_lazy(model, k))
    problems = [f"model tensors missing from the file: {missing[:5]}"] if missing else []
    problems += [f"model tensors in the file but not in this model: {extra[:5]}"] if extra else []
    for key in sorted(own.keys() & tensors.keys()):
        a, b, owner = own[key], tensors[key], key.rpartition(".")[0]
        if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape != b.shape \
                and not states.in_dynamic_module(model, owner) and type(model.get_submodule(
                    owner))._load_from_state_dict is nn.Module._load_from_state_dict:
            problems.append(f"model.{key}: shape {tuple(a.shape)} here, {tuple(b.shape)} in "
                            "the file")
    return problems
