"""A strategy's state as tensors and plain data, and back: what neve's checkpoint holds.

:func:`strategy_state` collects, :func:`load_strategy_state` restores into a
strategy built the same way (see :mod:`neve.plugins.checkpoint_match` for the
checks that come first):

* the model's ``state_dict``, each module's ``training`` flag and each
  parameter's ``requires_grad``, its tensors not yet set (registered as ``None``)
  and the plain attributes of its Avalanche ``DynamicModule`` s
  (:mod:`neve.plugins.model_state`: tensors of ``DynamicModule`` s, e.g.
  ``IncrementalClassifier``, are resized and lazily created tensors, e.g.
  ``NCMClassifier.class_means``, created to the file's shapes before the strict load);
* the optimizer's ``state_dict`` and the parameter names of each group, so that
  groups added or split since construction (neve's ``SlowLearnerPlugin``) are
  rebuilt on the model's parameters; Avalanche's ``optimized_param_id`` by names;
* the strategy's own attributes that are plain data (e.g. ``AnalyticCIL.base_trained``)
  and the ``state_dict`` of its other ``nn.Module`` attributes (the criterion);
* each plugin's ``state_dict`` (all neve plugins), or its attributes when they
  are all plain data (Avalanche's ``Clock``, ``PeriodicEval``) or a storage
  policy (``ExemplarsBuffer``) with a ``state_dict`` (Avalanche's ``ReplayPlugin``
  with neve's ``RecentSetsBuffer``; Avalanche's own buffers have none); the evaluator's
  ``all_metric_results``/``last_metric_results`` and each metric's ``state_dict``
  (``CurriculumEffectiveness``) or plain attributes; metrics in
  :data:`STATELESS_METRICS` are reset at the start of each phase and hold nothing;
* the states of the generators of Avalanche's ``RNGManager`` (python
  ``random``, numpy, torch CPU and CUDA; numpy's MT19937 keys as a tensor).

Anything else (Avalanche's replay buffers, EWC's importances, a metric with internal state
and no ``state_dict``) cannot be stored: :func:`strategy_state` refuses it with a
ValueError naming it. Loggers are outputs, not state: the strategy's own stay.
"""

from __future__ import annotations

import inspect

import numpy as np
import torch
from avalanche.evaluation.metrics import (
    EpochAccuracy,
    EpochLoss,
    ExperienceAccuracy,
    ExperienceLoss,
    MinibatchAccuracy,
    MinibatchLoss,
    RunningEpochAccuracy,
    RunningEpochLoss,
    StreamAccuracy,
    StreamLoss,
)
from avalanche.training.determinism.rng_manager import RNGManager
from avalanche.training.plugins import EvaluationPlugin
from avalanche.training.storage_policy import ExemplarsBuffer
from torch import nn

from ..models.distributed import is_distributed
from .checkpoint_match import class_name, settings_owners, strategy_settings
from .model_state import load_model, model_state
from .state_file import PICKLE_RISK, plain_data

# Avalanche metrics whose GenericPluginMetric resets at the start of each
# iteration, epoch, experience or stream of their phase (avalanche 0.6.0)
STATELESS_METRICS = (
    MinibatchAccuracy, EpochAccuracy, RunningEpochAccuracy, ExperienceAccuracy, StreamAccuracy,
    MinibatchLoss, EpochLoss, RunningEpochLoss, ExperienceLoss, StreamLoss,
)
# strategy attributes that live within one train/eval call, or are stored apart
_TRANSIENT = frozenset({
    "experience", "current_eval_stream", "_eval_streams", "adapted_dataset", "dataloader",
    "mbatch", "mb_output", "loss", "device",
})
_STORED_APART = frozenset({"model", "optimizer", "plugins", "evaluator", "clock",
                           "optimized_param_id"})


def refused(what: str, obj: object, detail: str) -> ValueError:
    return ValueError(
        f"cannot checkpoint {what} ({class_name(obj)}): {detail}, which the default "
        f"checkpoint format (tensors and plain data) cannot store; {PICKLE_RISK}"
    )


# ------------------------------------------------------------------------------ collect
def strategy_state(strategy) -> dict:
    """Everything :func:`load_strategy_state` restores, as tensors and plain data.

    Raises:
        ValueError: a plugin, metric, optimizer or attribute holds state that
            cannot be stored so (the message names it).
    """
    evaluator = strategy.evaluator
    state = {
        "strategy_class": class_name(strategy),
        "next_experience": int(strategy.clock.train_exp_counter),
        "settings": strategy_settings(strategy),
        "model": model_state(strategy.model),
        "optimizer": _optimizer_state(strategy),
        "optimized_param_names": None if getattr(strategy, "optimized_param_id", None) is None
        else list(strategy.optimized_param_id),
        "plugins": [_object_state(p, f"plugin {i}") for i, p in enumerate(strategy.plugins)],
        "metric_classes": [class_name(m) for m in getattr(evaluator, "metrics", [])],
        "rng": _rng_state(),
    }
    state.update(_attribute_state(strategy))
    try:
        return plain_data(state, "checkpoint")
    except ValueError as error:  # e.g. a custom RNG's state, an optimizer's state
        raise refused("the strategy", strategy, f"it holds {error}") from None


def _optimizer_state(strategy) -> dict | None:
    optimizer = getattr(strategy, "optimizer", None)
    if optimizer is None:
        return None
    names = {id(p): n for n, p in strategy.model.named_parameters()}
    groups = []
    for i, group in enumerate(optimizer.param_groups):
        if any(id(p) not in names for p in group["params"]):
            raise refused("the optimizer", optimizer,
                          f"its param group {i} holds parameters that are not the model's")
        groups.append([names[id(p)] for p in group["params"]])
    return {"class": class_name(optimizer), "state": optimizer.state_dict(), "groups": groups}


def _object_state(obj: object, what: str) -> dict:
    """A plugin's or metric's state: ``state_dict``, plain attributes, or nothing."""
    entry = {"class": class_name(obj), "kind": "none", "state": None}
    if isinstance(obj, EvaluationPlugin):
        entry["kind"] = "evaluator"
        entry["state"] = {
            "all": dict(obj.all_metric_results),
            "last": dict(obj.last_metric_results),
            "metrics": [_object_state(m, f"metric {i}") for i, m in enumerate(obj.metrics)],
        }
    elif _has_state_dict(obj):
        entry["kind"], entry["state"] = "state_dict", obj.state_dict()
    elif type(obj) not in STATELESS_METRICS:
        entry["kind"], entry["state"] = "attributes", dict(vars(obj))
        entry["parts"] = {}
        for name, value in list(entry["state"].items()):
            if isinstance(value, ExemplarsBuffer) and _has_state_dict(value):
                del entry["state"][name]  # e.g. ReplayPlugin.storage_policy
                entry["parts"][name] = {"class": class_name(value), "state": value.state_dict()}
    try:
        entry["state"] = plain_data(entry["state"], type(obj).__name__)
        entry["parts"] = plain_data(entry.get("parts", {}), type(obj).__name__)
    except ValueError as error:
        raise refused(f"{what} {type(obj).__name__}", obj, f"it holds {error}") from None
    return entry


def _has_state_dict(obj: object) -> bool:
    return callable(getattr(obj, "state_dict", None)) and callable(
        getattr(obj, "load_state_dict", None))


def _attribute_state(strategy) -> dict:
    attributes, modules = {}, {}
    plugins = [id(p) for p in strategy.plugins]
    for name, value in vars(strategy).items():
        if name in _TRANSIENT or name in _STORED_APART or id(value) in plugins:
            continue
        if isinstance(value, nn.Module):
            modules[name] = value.state_dict()
        elif not inspect.isroutine(value):
            try:
                attributes[name] = plain_data(value, name)
            except ValueError as error:
                raise refused(f"the strategy's attribute {name!r}", strategy,
                              f"it holds {error}") from None
    return {"attributes": attributes, "modules": modules}


def _rng_state() -> dict:
    state = {}
    for name, generator in RNGManager.random_generators.items():
        value = generator["save_state"]()
        if name == "numpy":
            kind, keys, pos, has_gauss, cached = value
            value = {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)),
                     "pos": int(pos), "has_gauss": int(has_gauss), "cached": float(cached)}
        elif name == "random":
            version, internal, gauss_next = value
            value = {"version": version, "internal": torch.tensor(internal, dtype=torch.int64),
                     "gauss_next": gauss_next}
        state[name] = value
    if torch.cuda.is_available():  # whose generator the others continue under torch.distributed
        state["torch.cuda.current"] = torch.cuda.current_device()
    return state


# ------------------------------------------------------------------------------ restore
def load_strategy_state(strategy, state: dict, *, override: bool) -> None:
    """Restore ``state`` (of :func:`strategy_state`) into ``strategy``, checks already done.

    ``override``: also take the file's settings where they differ.
    """
    if override:
        for owner, obj in settings_owners(strategy):
            for name, value in state["settings"].get(owner, {}).items():
                setattr(obj, name, value)
    load_model(strategy.model, state["model"], state["settings"])
    named = dict(strategy.model.named_parameters())
    if state["optimizer"] is not None:
        optimizer, saved = strategy.optimizer, state["optimizer"]
        optimizer.param_groups[:] = [
            {**{k: v for k, v in group.items() if k != "params"},
             "params": [named[n] for n in names]}
            for group, names in zip(saved["state"]["param_groups"], saved["groups"], strict=True)
        ]
        optimizer.load_state_dict(saved["state"])
        if override:
            optimizer.defaults.update(state["settings"].get("optimizer", {}))
    if state["optimized_param_names"] is not None:
        strategy.optimized_param_id = {n: named[n] for n in state["optimized_param_names"]}
    for name, value in state["attributes"].items():
        setattr(strategy, name, value)
    for name, value in state["modules"].items():
        getattr(strategy, name).load_state_dict(value)
    for plugin, entry in zip(strategy.plugins, state["plugins"], strict=True):
        _load_object(plugin, entry)
    _load_rng(state["rng"])


def _load_object(obj: object, entry: dict) -> None:
    if entry["kind"] == "evaluator":
        state = entry["state"]
        obj.all_metric_results.clear()
        obj.all_metric_results.update(state["all"])
        obj.last_metric_results = dict(state["last"])
        for metric, metric_entry in zip(obj.metrics, state["metrics"], strict=True):
            _load_object(metric, metric_entry)
    elif entry["kind"] == "state_dict":
        obj.load_state_dict(entry["state"])
    elif entry["kind"] == "attributes":
        for name, part in entry.get("parts", {}).items():
            getattr(obj, name).load_state_dict(part["state"])
        for name, value in entry["state"].items():
            setattr(obj, name, value)


def _load_rng(state: dict) -> None:
    for name, generator in RNGManager.random_generators.items():
        if name not in state:
            continue
        value = state[name]
        if name == "numpy":
            value = (value["kind"], value["keys"].cpu().numpy().astype(np.uint32),
                     value["pos"], value["has_gauss"], value["cached"])
        elif name == "random":
            value = (value["version"], tuple(value["internal"].tolist()), value["gauss_next"])
        elif name == "torch":
            value = value.cpu()
        elif name == "torch.cuda":
            value = [v.cpu() for v in value]
        generator["load_state"](value)
        if name == "torch.cuda":
            continue_saving_process_cuda_rng(value, state.get("torch.cuda.current"))


def continue_saving_process_cuda_rng(states: list[torch.Tensor], saved_device: int | None
                                     ) -> None:
    """Under ``torch.distributed``, this process's GPU generator takes rank 0's state.

    Rank 0 saved the generators of its node's GPUs and used ``saved_device``; each
    process uses its own current GPU, whose generator would otherwise get the
    state of rank 0's generator of that index (unused, still at the seed). Every
    process's generator is seeded alike and draws alike, so in an uninterrupted
    run it equals rank 0's. Nothing happens in one process or without the index
    (files saved before it was stored).
    """
    if not (is_distributed() and torch.cuda.is_available()) or saved_device is None:
        return
    torch.cuda.set_rng_state(states[saved_device], device=torch.cuda.current_device())


__all__ = ["STATELESS_METRICS", "load_strategy_state", "strategy_state"]
