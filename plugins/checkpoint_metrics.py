"""Avalanche's accuracy-matrix, forgetting and BWT metrics in neve's checkpoint, as plain data.

Registered with :func:`~neve.plugins.checkpoint_file.register_state` on import of
:mod:`neve.plugins.checkpoint`: ``AccuracyMatrixPluginMetric`` (its matrix as a
tensor, its counters as numbers), ``ExperienceForgetting`` / ``ExperienceBWT``
(the first and last accuracy of each experience, as ``{experience: float}``,
and the experience ids) and ``StreamForgetting`` / ``StreamBWT`` (the same and
the running mean of the stream's forgetting). Their inner accuracy meters are
reset before each use, so they are not stored. A save happens between
experiences, where these are all the state the metrics carry over. Loading
converts a metric's whole state before it changes the metric.
"""

from __future__ import annotations

import torch
from avalanche.evaluation.metrics import (
    AccuracyMatrixPluginMetric,
    ExperienceBWT,
    ExperienceForgetting,
    StreamBWT,
    StreamForgetting,
)

from .checkpoint_file import register_state


def _matrix_state(metric: AccuracyMatrixPluginMetric) -> dict:
    return {"matrix": metric.matrix.detach().clone(), "count": int(metric.count),
            "online": bool(metric.online), "num_training_steps": metric.num_training_steps}


def _load_matrix_state(metric: AccuracyMatrixPluginMetric, state: dict) -> None:
    steps = state["num_training_steps"]
    values = (torch.as_tensor(state["matrix"]).clone(), int(state["count"]),
              bool(state["online"]), None if steps is None else int(steps))
    metric.matrix, metric.count, metric.online, metric.num_training_steps = values


def _experience_state(metric: ExperienceForgetting) -> dict:
    return {"initial": {int(k): float(v) for k, v in metric.forgetting.initial.items()},
            "last": {int(k): float(v) for k, v in metric.forgetting.last.items()},
            "eval_exp_id": int(metric.eval_exp_id),
            "train_exp_id": None if metric.train_exp_id is None else int(metric.train_exp_id)}


def _load_experience_state(metric: ExperienceForgetting, state: dict) -> None:
    initial = {int(k): float(v) for k, v in state["initial"].items()}
    last = {int(k): float(v) for k, v in state["last"].items()}
    train, evaluated = state["train_exp_id"], int(state["eval_exp_id"])
    metric.forgetting.initial, metric.forgetting.last = initial, last
    metric.eval_exp_id, metric.train_exp_id = evaluated, None if train is None else int(train)


def _stream_state(metric: StreamForgetting) -> dict:
    mean = metric.stream_forgetting
    return {**_experience_state(metric), "stream_summed": float(mean.summed),
            "stream_weight": float(mean.weight)}


def _load_stream_state(metric: StreamForgetting, state: dict) -> None:
    summed, weight = float(state["stream_summed"]), float(state["stream_weight"])
    _load_experience_state(metric, state)
    metric.stream_forgetting.summed, metric.stream_forgetting.weight = summed, weight


register_state(AccuracyMatrixPluginMetric, _matrix_state, _load_matrix_state)
for _cls in (ExperienceForgetting, ExperienceBWT):
    register_state(_cls, _experience_state, _load_experience_state)
for _cls in (StreamForgetting, StreamBWT):
    register_state(_cls, _stream_state, _load_stream_state)
