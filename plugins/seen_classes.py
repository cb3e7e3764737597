"""The test data of the classes seen so far: the evaluation stream of online class-incremental CL.

Si-Blurry (Moon et al., ICCV 2023) and G-ACIL evaluate an online stream on the
test samples of the classes met in training so far; :func:`seen_classes_stream`
makes that one-experience stream for ``strategy.eval``, and
:class:`~neve.plugins.SeenClassesEvaluation` uses it.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from avalanche.benchmarks.scenarios.dataset_scenario import benchmark_from_datasets
from avalanche.benchmarks.scenarios.generic_scenario import EagerCLStream
from avalanche.benchmarks.scenarios.supervised import with_classes_timeline
from avalanche.benchmarks.scenarios.task_aware import with_task_labels
from avalanche.benchmarks.utils import AvalancheDataset
from avalanche.benchmarks.utils.classification_dataset import (
    _as_taskaware_supervised_classification_dataset,
)

from ..models.core.checks import Text
from ..models.core.data_checks import check_labelled, check_labels

#: Name of the stream :func:`seen_classes_stream` gives by default.
SEEN_STREAM = "seen_test"


def as_classification_dataset(dataset) -> AvalancheDataset:
    """``dataset`` (with integer ``.targets``) as Avalanche's classification dataset, task label 0;
    one already an ``AvalancheDataset`` with ``targets_task_labels`` is returned as it is."""
    if isinstance(dataset, AvalancheDataset) and hasattr(dataset, "targets_task_labels"):
        return dataset
    return _as_taskaware_supervised_classification_dataset(dataset)


def seen_classes_stream(test, classes: Iterable[int], *, name: str = SEEN_STREAM) -> EagerCLStream:
    """A one-experience stream of the samples of ``test`` whose class is in ``classes``.

    The evaluation of online class-incremental learning on the classes seen so far
    (the Si-Blurry authors evaluate on the test samples of the classes met in the
    training stream; pass an online experience's ``classes_seen_so_far``). The
    experience has task label 0, ``classes_in_this_experience`` (the classes of
    ``classes`` that ``test`` holds) and the stream is named ``name``: pass it to
    ``strategy.eval``.

    Raises:
        TypeError: ``test`` without integer ``.targets``, ``classes`` not integers.
        ValueError: ``classes`` empty; ``name`` not a non-empty string; no sample
            of ``test`` has a class in ``classes``.
    """
    targets = check_labelled(test, "test")
    try:
        values = classes if isinstance(classes, torch.Tensor) else list(classes)
    except TypeError as err:
        raise TypeError(f"classes must be an iterable of class labels, got {classes!r}") from err
    if len(values) == 0:
        raise ValueError("classes must hold at least one class label, got none")
    wanted = check_labels(torch.as_tensor(values), "classes")
    name = Text("a stream name (a non-empty string)").check(name, "name")
    idx = torch.nonzero(torch.isin(targets, wanted)).flatten()
    if len(idx) == 0:
        raise ValueError(f"classes {sorted(set(wanted.tolist()))} have no sample in test")
    data = as_classification_dataset(test).subset(idx.tolist())
    scenario = with_task_labels(with_classes_timeline(benchmark_from_datasets(**{name: [data]})))
    return getattr(scenario, f"{name}_stream")
