"""Does a checkpoint's content fit the strategy it is loaded into? Checked before anything changes.

Three checks, each listing every difference it finds:

* classes: the strategy's, each plugin's (and its storage policy's, e.g.
  ``ReplayPlugin.storage_policy``), each evaluator metric's and the optimizer's
  (module and qualified name) must be the file's;
* settings: a *setting* is an attribute of an object that has the name of one of
  its class's constructor arguments and a plain value (number, string, bool,
  ``None``, ``torch.dtype``), e.g. ``RecursiveLeastSquares.gamma`` or
  ``AnalyticCIL.train_mb_size``; it is collected for the strategy, every
  submodule of the model, every plugin and metric, and the optimizer's
  ``defaults``. A setting that differs is an error unless ``override`` (the
  file's value is then taken);
* shapes: the model's tensors must have the file's names and shapes, except in
  Avalanche ``DynamicModule`` s (they grow; the loader resizes them) and in
  modules that resize themselves (their class overrides ``_load_from_state_dict``,
  e.g. :class:`neve.models.RecursiveLeastSquares`; their settings, e.g.
  ``in_features``, are checked instead). Shapes cannot be overridden.
"""

from __future__ import annotations

import inspect

import torch
from avalanche.models import DynamicModule
from torch import nn

from .state_file import SCALARS


def class_name(obj: object) -> str | None:
    """``module.QualifiedName`` of ``obj``'s class (``None`` for ``None``)."""
    return None if obj is None else f"{type(obj).__module__}.{type(obj).__qualname__}"


def setting_names(cls: type) -> set[str]:
    """Names of the arguments of the ``__init__`` of ``cls`` and its bases."""
    names: set[str] = set()
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None or klass is object:
            continue
        try:
            params = inspect.signature(init).parameters.values()
        except (TypeError, ValueError):
            continue
        names |= {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    return names - {"self"}


def settings_of(obj: object) -> dict:
    """``obj``'s settings: its instance attributes named like its constructor's arguments."""
    attrs = vars(obj)
    return {
        name: attrs[name]
        for name in sorted(setting_names(type(obj)) & attrs.keys())
        if isinstance(attrs[name], SCALARS)
    }


def in_dynamic_module(model: nn.Module, name: str, *, include_self: bool = True) -> bool:
    """Whether ``model``'s submodule ``name`` lies in an Avalanche ``DynamicModule``.

    ``include_self``: whether ``name`` itself being one counts.
    """
    parts = name.split(".") if name else []
    module, chain = model, [model]
    for part in parts:
        module = module._modules.get(part)
        if module is None:
            return False
        chain.append(module)
    if not include_self:
        chain = chain[:-1]
    return any(isinstance(m, DynamicModule) for m in chain)


def resizes_itself(module: nn.Module) -> bool:
    return type(module)._load_from_state_dict is not nn.Module._load_from_state_dict


def settings_owners(strategy) -> list[tuple[str, object]]:
    """``(owner name, object)`` for the strategy, model submodules, plugins and metrics."""
    owners = [(type(strategy).__name__, strategy)]
    owners += [(f"model.{name}" if name else "model", module)
               for name, module in strategy.model.named_modules()]
    taken = {name for name, _ in owners}
    for obj in [*strategy.plugins, *getattr(strategy.evaluator, "metrics", [])]:
        name = type(obj).__name__
        name = name if name not in taken else f"{name}#{len(taken)}"
        taken.add(name)
        owners.append((name, obj))
    return owners


def strategy_settings(strategy) -> dict[str, dict]:
    """``{owner: settings}`` of :func:`settings_owners` and the optimizer's ``defaults``."""
    settings = {name: settings_of(obj) for name, obj in settings_owners(strategy)}
    optimizer = getattr(strategy, "optimizer", None)
    if optimizer is not None:
        settings["optimizer"] = {k: v for k, v in optimizer.defaults.items()
                                 if isinstance(v, SCALARS)}
    return settings


def class_problems(strategy, payload: dict) -> list[str]:
    """Differences in the classes of strategy, plugins, metrics and optimizer."""
    problems = []
    mine = class_name(strategy)
    if payload["strategy_class"] != mine:
        problems.append(f"the file is for a {payload['strategy_class']}, this strategy is a {mine}")
    for what, here, there in (
        ("plugins", [class_name(p) for p in strategy.plugins],
         [p["class"] for p in payload["plugins"]]),
        ("evaluator metrics", [class_name(m) for m in getattr(strategy.evaluator, "metrics", [])],
         payload["metric_classes"]),
        ("optimizer", [class_name(getattr(strategy, "optimizer", None))],
         [None if payload["optimizer"] is None else payload["optimizer"]["class"]]),
    ):
        if here != there:
            problems.append(f"{what}: this strategy has {here}, the file {there}")
    if not problems:  # the parts of plugins stored by their own state_dict
        for plugin, entry in zip(strategy.plugins, payload["plugins"], strict=True):
            for name, part in (entry.get("parts") or {}).items():
                mine = class_name(getattr(plugin, name, None))
                if mine != part["class"]:
                    problems.append(f"{type(plugin).__name__}.{name}: this strategy has "
                                    f"{mine}, the file {part['class']}")
    return problems


def setting_problems(strategy, payload: dict) -> list[str]:
    """Settings that differ between ``strategy`` and the file (see the module docstring)."""
    problems = []
    here = strategy_settings(strategy)
    for owner, saved in payload["settings"].items():
        if owner.startswith("model.") and in_dynamic_module(
            strategy.model, owner[len("model."):], include_self=False
        ):
            continue  # layers that grow with the DynamicModule around them
        mine = here.get(owner, {})
        for name in sorted(saved.keys() & mine.keys()):
            if not _same(mine[name], saved[name]):
                problems.append(
                    f"{owner}.{name}: {mine[name]!r} asked, {saved[name]!r} in the file"
                )
    return problems


def is_lazy(model: nn.Module, key: str) -> bool:
    """Whether ``model``'s tensor ``key`` is declared but not yet set, so the file may set it.

    True for a parameter or buffer registered as ``None`` (e.g. Avalanche
    ``NCMClassifier.class_means`` before the first class mean) and, for a
    ``DynamicModule``, for an attribute of its own that it has not created yet.
    """
    owner_name, _, attr = key.rpartition(".")
    try:
        owner = model.get_submodule(owner_name)
    except AttributeError:
        return False
    for slots in (owner._parameters, owner._buffers):
        if attr in slots and slots[attr] is None:
            return True
    return isinstance(owner, DynamicModule) and not hasattr(owner, attr)


def shape_problems(model: nn.Module, saved: dict, unset: tuple | list = ()) -> list[str]:
    """Tensors of the model missing, extra or of another shape than in the file.

    ``saved``: the file's model ``state_dict``; ``unset``: names of the tensors the
    file's model declared but had not set (they may be set here). A tensor in the
    file that this model declares but has not set (:func:`is_lazy`) is no problem.
    """
    own = model.state_dict()
    missing = sorted(own.keys() - saved.keys() - set(unset))
    extra = sorted(k for k in saved.keys() - own.keys() if not is_lazy(model, k))
    problems = []
    if missing:
        problems.append(f"model tensors missing from the file: {missing[:5]}")
    if extra:
        problems.append(f"model tensors in the file but not in this model: {extra[:5]}")
    for key in sorted(own.keys() & saved.keys()):
        a, b = own[key], saved[key]
        if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)):
            continue
        owner = key.rpartition(".")[0]
        if a.shape != b.shape and not (
            in_dynamic_module(model, owner) or resizes_itself(model.get_submodule(owner))
        ):
            problems.append(
                f"model.{key}: shape {tuple(a.shape)} here, {tuple(b.shape)} in the file"
            )
    return problems


def _same(a: object, b: object) -> bool:
    return type(a) is type(b) and a == b or (
        isinstance(a, (int, float)) and isinstance(b, (int, float))
        and not isinstance(a, bool) and not isinstance(b, bool) and a == b
    )
