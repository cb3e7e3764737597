"""A model's part of neve's checkpoint: its tensors, flags, lazy tensors and growing modules.

:func:`model_state` holds

* ``state``: the model's ``state_dict``; ``training``: each module's flag;
  ``requires_grad``: each parameter's flag (its keys also tell parameters from buffers);
* ``unset``: the tensors a module declares but has not set yet (a buffer or
  parameter registered as ``None``, e.g. Avalanche ``NCMClassifier.class_means``
  before the first class mean), absent from ``state``;
* ``attributes``: the plain-data attributes of each Avalanche ``DynamicModule``
  (e.g. ``NCMClassifier.class_means_dict``/``max_class``,
  ``MultiHeadClassifier.max_class_label``), which grow with the data as its
  tensors do. Attributes that are not plain data are not stored.

:func:`load_model` restores it into a model built the same way (the checks of
:func:`neve.plugins.checkpoint_match.shape_problems` done): tensors of
``DynamicModule`` s are resized to the file's shapes, tensors set in the file
but unset here (or, in a ``DynamicModule``, not yet created) are created with
the file's shape, tensors unset in the file (registered as ``None``) are unset
here, then the strict load copies the values. A tensor that a ``DynamicModule``
created on first use is refused when the file lacks it (it cannot be unset).
"""

from __future__ import annotations

import copy

import torch
from avalanche.models import DynamicModule
from torch import nn

from .checkpoint_match import in_dynamic_module, is_lazy
from .state_file import plain_data

# attributes every nn.Module has: internals, not state of a particular module
_MODULE_INTERNALS = frozenset(vars(nn.Module())) | {"training"}


def model_state(model: nn.Module) -> dict:
    """The model's state (see the module docstring), not yet made plain data."""
    unset = []
    for name, module in model.named_modules():
        prefix = f"{name}." if name else ""
        unset += [prefix + k for k, v in module._parameters.items() if v is None]
        unset += [prefix + k for k, v in module._buffers.items()
                  if v is None and k not in module._non_persistent_buffers_set]
    return {
        "state": model.state_dict(),
        "training": {name: m.training for name, m in model.named_modules()},
        "requires_grad": {name: p.requires_grad for name, p in model.named_parameters()},
        "unset": sorted(unset),
        "attributes": {name: _plain_attributes(m) for name, m in model.named_modules()
                       if isinstance(m, DynamicModule)},
    }


def _plain_attributes(module: nn.Module) -> dict:
    kept = {}
    for name, value in vars(module).items():
        if name in _MODULE_INTERNALS:
            continue
        try:
            kept[name] = plain_data(value, name)
        except ValueError:
            continue  # e.g. a set: not stored (documented)
    return kept


def load_model(model: nn.Module, saved: dict, settings: dict) -> None:
    """Restore ``saved`` (of :func:`model_state`, as plain data) into ``model``.

    ``settings``: the file's settings, for the sizes of layers in ``DynamicModule`` s.
    """
    tensors, unset = saved["state"], set(saved.get("unset", ()))
    own = model.state_dict(keep_vars=True)
    for key in own.keys() - tensors.keys():  # set here, not (yet) in the file's model
        owner, attr = _owner(model, key)
        if key in unset:
            slots = owner._parameters if attr in owner._parameters else owner._buffers
            slots[attr] = None
        elif isinstance(owner, DynamicModule):
            # created on first use (only by a load that is being rolled back: the
            # checks refuse a file without it otherwise)
            delattr(owner, attr)
    for key, value in tensors.items():
        if not isinstance(value, torch.Tensor):
            continue
        owner, attr = _owner(model, key)
        if key not in own and is_lazy(model, key):
            new = torch.empty_like(value)
            if key in saved["requires_grad"]:
                owner._parameters[attr] = nn.Parameter(new, saved["requires_grad"][key])
            else:
                owner._buffers[attr] = new
        elif key in own and own[key].shape != value.shape and in_dynamic_module(
            model, key.rpartition(".")[0]
        ):
            old = own[key]
            new = torch.empty(value.shape, dtype=old.dtype, device=old.device)
            if attr in owner._parameters:
                owner._parameters[attr] = nn.Parameter(new, requires_grad=old.requires_grad)
            else:
                owner._buffers[attr] = new
    for owner, values in settings.items():
        name = owner[len("model."):]
        if owner.startswith("model.") and in_dynamic_module(model, name, include_self=False):
            for attr, value in values.items():  # e.g. a grown Linear's out_features
                setattr(model.get_submodule(name), attr, value)
    if unset:
        # an override of load_state_dict may need every tensor its class declares
        # (Avalanche's NCMClassifier raises KeyError without class_means): torch's own
        # load, and the stored attributes below restore what such an override would
        nn.Module.load_state_dict(model, tensors, strict=True)
    else:
        model.load_state_dict(tensors, strict=True)
    for name, attributes in saved.get("attributes", {}).items():
        module = model.get_submodule(name)
        for attr, value in attributes.items():
            setattr(module, attr, copy.copy(value))
    for name, module in model.named_modules():
        module.training = saved["training"].get(name, module.training)
    for name, param in model.named_parameters():
        param.requires_grad_(saved["requires_grad"].get(name, param.requires_grad))


def _owner(model: nn.Module, key: str) -> tuple[nn.Module, str]:
    owner_name, _, attr = key.rpartition(".")
    return model.get_submodule(owner_name), attr


__all__ = ["load_model", "model_state"]
