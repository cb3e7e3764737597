"""A strategy's state as tensors and plain data, and back: what neve's checkpoint holds.

Every component's state goes through ``state_dict`` / ``load_state_dict``: the
model's (with its modules' ``training`` flags, ``requires_grad``, tensors not yet
set, and the plain attributes of modules in Avalanche ``DynamicModule`` s, which
grow), the optimizer's (with each group's parameter names), the strategy's own,
each plugin's and metric's, or what an adapter gives for an Avalanche class without
one (:func:`~neve.plugins.checkpoint_file.register_state`); the evaluator's results; the
RNG states.
Anything else is refused at save, naming it.
"""

from __future__ import annotations

import copy

import avalanche.evaluation.metrics as av_metrics
import torch
from avalanche.models import DynamicModule
from avalanche.training import supervised as av
from avalanche.training.plugins import EvaluationPlugin
from avalanche.training.templates import SupervisedTemplate
from torch import nn

from . import checkpoint_file as files
from .checkpoint_file import PICKLE_RISK, adapter_of, plain_data

#: Avalanche strategies whose state lives in their plugins only.
PLUGIN_ONLY_STRATEGIES = (SupervisedTemplate, av.Naive, av.Replay, av.EWC, av.LwF, av.GDumb,
                          av.SynapticIntelligence, av.MAS, av.GEM, av.AGEM, av.LFL)
#: Avalanche metrics that reset at the start of each phase and hold nothing between calls.
STATELESS_METRICS = tuple(getattr(av_metrics, f"{scope}{kind}") for kind in ("Accuracy", "Loss")
                          for scope in ("Minibatch", "Epoch", "RunningEpoch", "Experience",
                                        "Stream"))
_MODULE_INTERNALS = frozenset(vars(nn.Module())) | {"training"}


def class_name(obj: object) -> str | None:
    return None if obj is None else f"{type(obj).__module__}.{type(obj).__qualname__}"


def unstorable_error(what: str, obj: object, detail: str) -> ValueError:
    return ValueError(f"cannot checkpoint {what} ({class_name(obj)}): {detail}, which the "
                      f"default checkpoint format (tensors and plain data) cannot store; "
                      f"{PICKLE_RISK}")


def has_state_dict(obj: object) -> bool:
    return all(callable(getattr(obj, name, None)) for name in ("state_dict", "load_state_dict"))


def component_state(obj: object, what: str) -> dict:
    """A plugin's or metric's entry: its class, its state and its parts' classes."""
    entry = {"class": class_name(obj), "kind": "none", "state": None, "parts": {}}
    if isinstance(obj, EvaluationPlugin):
        entry["kind"], entry["state"] = "evaluator", {
            "all": dict(obj.all_metric_results), "last": dict(obj.last_metric_results),
            "metrics": [component_state(m, f"metric {i}") for i, m in enumerate(obj.metrics)]}
    elif has_state_dict(obj):
        entry["kind"], entry["state"] = "state_dict", obj.state_dict()
    elif adapter_of(obj) is not None:
        get, _, parts = adapter_of(obj)
        entry["kind"], entry["state"] = "adapter", get(obj)
        entry["parts"] = {name: class_name(part) for name, part in parts(obj).items()}
    elif type(obj) not in STATELESS_METRICS and vars(obj):
        raise unstorable_error(f"{what} {type(obj).__name__}", obj, "it has no state_dict and "
                               "no adapter (neve.plugins.checkpoint_file.register_state)")
    try:
        entry["state"] = plain_data(entry["state"], type(obj).__name__)
    except ValueError as error:
        raise unstorable_error(f"{what} {type(obj).__name__}", obj, f"it holds {error}") \
            from None
    return entry


def load_component(obj: object, entry: dict) -> None:
    state = copy.deepcopy(entry["state"])
    if entry["kind"] == "evaluator":
        obj.all_metric_results.clear()
        obj.all_metric_results.update(state["all"])
        obj.last_metric_results = dict(state["last"])
        for metric, metric_entry in zip(obj.metrics, state["metrics"], strict=True):
            load_component(metric, metric_entry)
    elif entry["kind"] == "state_dict":
        obj.load_state_dict(state)
    elif entry["kind"] == "adapter":
        adapter_of(obj)[1](obj, state)


# ------------------------------------------------------------------------------ the model
def in_dynamic_module(model: nn.Module, name: str) -> bool:
    """Whether ``model``'s submodule ``name`` is, or lies in, an Avalanche ``DynamicModule``."""
    module = model
    for part in [""] + (name.split(".") if name else []):
        module = module._modules.get(part) if part else module
        if isinstance(module, DynamicModule) or module is None:
            return module is not None
    return False


def is_lazy(model: nn.Module, key: str) -> bool:
    """Whether tensor ``key`` is declared but not set (``None``, or not yet made by its
    ``DynamicModule``), so a file may set it."""
    owner_name, _, attr = key.rpartition(".")
    try:
        owner = model.get_submodule(owner_name)
    except AttributeError:
        return False
    if any(attr in slots and slots[attr] is None for slots in (owner._parameters, owner._buffers)):
        return True
    return isinstance(owner, DynamicModule) and not hasattr(owner, attr)


def model_state(model: nn.Module) -> dict:
    unset = sorted(f"{name}.{k}".lstrip(".") for name, m in model.named_modules()
                   for k, v in [*m._parameters.items(), *m._buffers.items()]
                   if v is None and k not in m._non_persistent_buffers_set)
    attributes = {}
    for name, module in model.named_modules():
        if in_dynamic_module(model, name):  # a growing module and the layers inside it
            attributes[name] = {}
            for attr, value in vars(module).items():
                try:
                    if attr not in _MODULE_INTERNALS:
                        attributes[name][attr] = plain_data(value, attr)
                except ValueError:
                    continue  # e.g. a set: not stored
    return {"state": model.state_dict(), "unset": unset, "attributes": attributes,
            "training": {name: m.training for name, m in model.named_modules()},
            "requires_grad": {name: p.requires_grad for name, p in model.named_parameters()}}


def load_model(model: nn.Module, saved: dict) -> None:
    """Restore :func:`model_state` (shapes checked): growing modules take the file's shapes,
    tensors set in the file but unset here are created, tensors unset there are unset."""
    tensors, unset = saved["state"], set(saved.get("unset", ()))
    own = model.state_dict(keep_vars=True)
    for key in own.keys() - tensors.keys():  # set here, not (yet) in the file's model
        owner, attr = _owner(model, key)
        if key in unset:
            (owner._parameters if attr in owner._parameters else owner._buffers)[attr] = None
        elif isinstance(owner, DynamicModule):
            delattr(owner, attr)  # created on first use (only by a load being rolled back)
    for key, value in tensors.items():
        owner, attr = _owner(model, key)
        old = own.get(key)
        if not isinstance(value, torch.Tensor) or old is None and not is_lazy(model, key) or (
                old is not None) and (
                old.shape == value.shape or not in_dynamic_module(model, key.rpartition(".")[0])):
            continue
        new = torch.empty(value.shape, dtype=(old if old is not None else value).dtype,
                          device=(old if old is not None else value).device)
        if key in saved["requires_grad"]:
            owner._parameters[attr] = nn.Parameter(new, saved["requires_grad"][key])
        else:
            owner._buffers[attr] = new
    for name, attributes in saved.get("attributes", {}).items():  # e.g. a grown out_features
        for attr, value in attributes.items():
            setattr(model.get_submodule(name), attr, copy.copy(value))
    # an override of load_state_dict may need every tensor its class declares (Avalanche's
    # NCMClassifier raises KeyError without class_means): torch's own when some are unset
    (nn.Module.load_state_dict if unset else type(model).load_state_dict)(model, tensors)
    for name, module in model.named_modules():
        module.training = saved["training"].get(name, module.training)
    for name, param in model.named_parameters():
        param.requires_grad_(saved["requires_grad"].get(name, param.requires_grad))


def _owner(model: nn.Module, key: str) -> tuple[nn.Module, str]:
    owner_name, _, attr = key.rpartition(".")
    return model.get_submodule(owner_name), attr


# ---------------------------------------------------------------------------- the strategy
def optimizer_state(strategy) -> dict | None:
    """The optimizer's ``state_dict``, its class and each group's parameter names."""
    optimizer = getattr(strategy, "optimizer", None)
    if optimizer is None:
        return None
    names = {id(p): n for n, p in strategy.model.named_parameters()}
    if any(id(p) not in names for g in optimizer.param_groups for p in g["params"]):
        raise unstorable_error("the optimizer", optimizer, "a param group holds parameters "
                               "that are not the model's")
    return {"class": class_name(optimizer), "state": optimizer.state_dict(),
            "groups": [[names[id(p)] for p in g["params"]] for g in optimizer.param_groups]}


def load_optimizer_state(strategy, saved: dict | None) -> None:
    """Rebuild the groups on the model's parameters by name, then load the state."""
    if saved is not None:
        named = dict(strategy.model.named_parameters())
        strategy.optimizer.param_groups[:] = [
            {**{k: v for k, v in group.items() if k != "params"},
             "params": [named[n] for n in names]}
            for group, names in zip(saved["state"]["param_groups"], saved["groups"], strict=True)]
        strategy.optimizer.load_state_dict(saved["state"])


def strategy_state(strategy, settings: dict) -> dict:
    """What :func:`load_strategy_state` restores, and ``settings``; a ValueError names the
    component whose state cannot be stored so."""
    if not has_state_dict(strategy) and type(strategy) not in PLUGIN_ONLY_STRATEGIES:
        raise unstorable_error("the strategy", strategy, "it has no state_dict for the state "
                               "of its own")
    state = {
        "strategy_class": class_name(strategy),
        "next_experience": int(strategy.clock.train_exp_counter),
        "settings": settings,
        "strategy": strategy.state_dict() if has_state_dict(strategy) else {},
        "model": model_state(strategy.model),
        "optimizer": optimizer_state(strategy),
        "optimized_param_names": None if getattr(strategy, "optimized_param_id", None) is None
        else list(strategy.optimized_param_id),
        "plugins": [component_state(p, f"plugin {i}") for i, p in enumerate(strategy.plugins)],
        "metric_classes": [class_name(m) for m in getattr(strategy.evaluator, "metrics", [])],
        "rng": files.rng_state(),
    }
    try:
        return plain_data(state, "checkpoint")
    except ValueError as error:  # e.g. a custom RNG's state, an optimizer's state
        raise unstorable_error("the strategy", strategy, f"it holds {error}") from None


def load_strategy_state(strategy, state: dict) -> None:
    """Restore ``state`` (of :func:`strategy_state`) into ``strategy``; checks already done."""
    load_model(strategy.model, state["model"])
    named = dict(strategy.model.named_parameters())
    load_optimizer_state(strategy, state["optimizer"])
    if state["optimized_param_names"] is not None:
        strategy.optimized_param_id = {n: named[n] for n in state["optimized_param_names"]}
    if has_state_dict(strategy):
        strategy.load_state_dict(copy.deepcopy(state["strategy"]))
    for plugin, entry in zip(strategy.plugins, state["plugins"], strict=True):
        load_component(plugin, entry)
    files.load_rng_state(state["rng"])
