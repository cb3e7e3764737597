"""Si-Blurry: the stochastic-incremental blurry stream of generalized class-incremental learning.

Moon et al., "Online Class Incremental Learning on Stochastic Blurry Task
Boundary via Mask and Visual Prompt Tuning" (ICCV 2023), sec. 3 (the Si-Blurry
scenario), also the evaluation stream of G-ACIL (Zhuang et al., 2024). The split:

1. a random ``disjoint_class_ratio`` of the classes are *disjoint*: each appears
   in one task only; the others are *blurry* classes;
2. each kind of class is cut into ``n_tasks`` groups at random cut points, so the
   number of classes (and samples) per task is uneven;
3. every sample goes to the task owning its class, except a random share
   ``blurry_sample_ratio`` of the blurry classes' samples: these are pooled,
   shuffled and dealt back over the tasks in random uneven amounts, so blurry
   classes appear early, recur, and overlap task boundaries;
4. each task's samples are shuffled.

In the online variant the tasks are cut into experiences of ``experience_size``
samples, in the task's shuffled order (:func:`~neve.benchmarks.online.split_online`:
each experience knows its classes, so an ``IncrementalClassifier`` can grow on it).
"""

from __future__ import annotations

import torch
from avalanche.benchmarks.scenarios.dataset_scenario import benchmark_from_datasets
from avalanche.benchmarks.scenarios.generic_scenario import CLScenario
from avalanche.benchmarks.scenarios.supervised import with_classes_timeline
from avalanche.benchmarks.scenarios.task_aware import with_task_labels
from avalanche.benchmarks.utils.classification_dataset import (
    _as_taskaware_supervised_classification_dataset,
)
from torch.utils.data import Dataset

from ..models.core.checks import (
    check_bool,
    check_fraction,
    check_int,
    check_labelled,
    check_labels,
    check_seed,
)
from .deprecation import NOT_GIVEN, renamed_keyword
from .online import split_online


def _random_cuts(n_items: int, n_groups: int, gen: torch.Generator) -> list[int]:
    """Sorted cut points ``[0, c_1, ..., n_items]`` splitting ``n_items`` into ``n_groups``."""
    inner = torch.randint(0, n_items + 1, (n_groups - 1,), generator=gen).sort().values
    return [0, *inner.tolist(), n_items]


def si_blurry_split(
    targets: torch.Tensor,
    *,
    n_tasks: int = 5,
    disjoint_class_ratio: float = 0.5,
    blurry_sample_ratio: float = 0.1,
    seed: int = 0,
) -> tuple[list[torch.Tensor], list[list[int]], list[list[int]]]:
    """Si-Blurry task split of a labelled training set (Moon et al., ICCV 2023, sec. 3).

    Args:
        targets: integer labels ``[N]``.
        n_tasks: number of tasks (>= 1, <= the number of classes).
        disjoint_class_ratio: share of classes that appear in one task only, in [0, 1].
        blurry_sample_ratio: share of the blurry classes' samples dealt to random
            tasks, in [0, 1].
        seed: the split depends on nothing else (an integer >= 0).

    Returns:
        ``(task_indices, disjoint_classes, blurry_classes)``: for each task the
        (shuffled) indices into ``targets``, and the disjoint and blurry classes it
        owns. Every task owns at least one class; the cut points are redrawn
        until it does.

    Raises:
        TypeError: an argument of the wrong kind (float or string counts,
            non-integer labels), naming it.
        ValueError: labels not 1-d, negative or non-integer; ``n_tasks`` outside
            [1, number of classes]; a ratio outside [0, 1]; ``seed`` < 0.
    """
    targets = check_labels(targets, "targets")
    classes = torch.unique(targets)
    n_tasks = check_int(n_tasks, "n_tasks", minimum=1)
    if n_tasks > len(classes):
        raise ValueError(
            f"n_tasks must be in [1, number of classes = {len(classes)}], got {n_tasks}"
        )
    disjoint_class_ratio = check_fraction(disjoint_class_ratio, "disjoint_class_ratio")
    blurry_sample_ratio = check_fraction(blurry_sample_ratio, "blurry_sample_ratio")
    gen = torch.Generator().manual_seed(check_seed(seed))
    order = classes[torch.randperm(len(classes), generator=gen)]
    n_disjoint = int(round(disjoint_class_ratio * len(classes)))
    disjoint, blurry = order[:n_disjoint], order[n_disjoint:]
    while True:
        dcut = _random_cuts(len(disjoint), n_tasks, gen)
        bcut = _random_cuts(len(blurry), n_tasks, gen)
        disjoint_groups = [disjoint[dcut[t] : dcut[t + 1]].tolist() for t in range(n_tasks)]
        blurry_groups = [blurry[bcut[t] : bcut[t + 1]].tolist() for t in range(n_tasks)]
        if all(disjoint_groups[t] or blurry_groups[t] for t in range(n_tasks)):
            break

    owner = torch.full((int(classes.max()) + 1,), -1, dtype=torch.long)
    for t in range(n_tasks):
        owner[disjoint_groups[t] + blurry_groups[t]] = t
    is_blurry = torch.zeros_like(owner, dtype=torch.bool)
    is_blurry[blurry] = True

    own_disjoint, own_blurry = [], []
    for t in range(n_tasks):
        idx = torch.nonzero(owner[targets] == t).flatten()
        idx = idx[torch.randperm(len(idx), generator=gen)]
        blur_mask = is_blurry[targets[idx]]
        own_disjoint.append(idx[~blur_mask])
        own_blurry.append(idx[blur_mask])
    n_moved = int(blurry_sample_ratio * sum(len(b) for b in own_blurry))
    share = _random_cuts(n_moved, n_tasks, gen)
    moved, kept = [], []
    for t in range(n_tasks):
        k = min(share[t + 1] - share[t], len(own_blurry[t]))
        moved.append(own_blurry[t][:k])
        kept.append(own_blurry[t][k:])
    pool = torch.cat(moved)
    pool = pool[torch.randperm(len(pool), generator=gen)]
    sizes = [len(m) for m in moved]
    dealt = list(torch.split(pool, sizes))
    tasks = []
    for t in range(n_tasks):
        idx = torch.cat([own_disjoint[t], kept[t], dealt[t]])
        tasks.append(idx[torch.randperm(len(idx), generator=gen)])
    return tasks, disjoint_groups, blurry_groups


def si_blurry_benchmark(
    train: Dataset,
    test: Dataset,
    *,
    n_tasks: int = 5,
    disjoint_class_ratio: float = 0.5,
    blurry_sample_ratio: float = 0.1,
    seed: int = 0,
    online: bool = False,
    experience_size: int = 10,
    access_task_boundaries: bool = False,
    online_batch_size: int = NOT_GIVEN,
) -> CLScenario:
    """Si-Blurry generalized class-incremental benchmark (Moon et al., ICCV 2023).

    Args:
        train, test: datasets with integer ``.targets`` (any dataset Avalanche's
            ``nc_benchmark`` accepts).
        n_tasks, disjoint_class_ratio, blurry_sample_ratio, seed: see
            :func:`si_blurry_split`.
        online: if True, ``train_stream`` is the online stream of
            ``experience_size``-sample experiences (:func:`split_online`, each
            with its ``classes_in_this_experience``); ``task_stream`` keeps the
            ``n_tasks`` task experiences.
        experience_size: samples per online experience.
        access_task_boundaries: whether strategies may read the online
            experiences' ``is_first_subexp`` / ``is_last_subexp``.
        online_batch_size: deprecated name of ``experience_size``.

    Returns:
        A ``CLScenario`` with ``train_stream`` (one experience per task, whose
        ``classes_in_this_experience`` include the blurry samples' classes) and
        ``test_stream`` (experience ``t``: test samples of the classes task ``t``
        owns), all with task label 0 (metrics keys as ``nc_benchmark``'s), plus
        attributes ``disjoint_classes`` and ``blurry_classes`` (per task) and
        ``task_indices`` (indices into ``train`` per task).
    """
    experience_size = renamed_keyword(
        experience_size,
        online_batch_size,
        new="experience_size",
        old="online_batch_size",
        default=10,
    )
    experience_size = check_int(experience_size, "experience_size", minimum=1)
    online = check_bool(online, "online")
    access_task_boundaries = check_bool(access_task_boundaries, "access_task_boundaries")
    train_targets = check_labelled(train, "train")
    test_targets = check_labelled(test, "test")
    tasks, disjoint_groups, blurry_groups = si_blurry_split(
        train_targets,
        n_tasks=n_tasks,
        disjoint_class_ratio=disjoint_class_ratio,
        blurry_sample_ratio=blurry_sample_ratio,
        seed=seed,
    )
    av_train = _as_taskaware_supervised_classification_dataset(train)
    av_test = _as_taskaware_supervised_classification_dataset(test)
    train_exps = [av_train.subset(idx.tolist()) for idx in tasks]
    test_exps = []
    for t in range(n_tasks):
        owned = torch.tensor(disjoint_groups[t] + blurry_groups[t], dtype=torch.long)
        idx = torch.nonzero(torch.isin(test_targets, owned)).flatten()
        test_exps.append(av_test.subset(idx.tolist()))
    bm = with_task_labels(
        with_classes_timeline(benchmark_from_datasets(train=train_exps, test=test_exps))
    )
    if online:
        online_stream = split_online(
            bm.train_stream,
            experience_size,
            shuffle=False,
            access_task_boundaries=access_task_boundaries,
        )
        task_stream = bm.train_stream
        task_stream.name = "task"
        bm = CLScenario([online_stream, bm.test_stream, task_stream])
    bm.disjoint_classes = disjoint_groups
    bm.blurry_classes = blurry_groups
    bm.task_indices = tasks
    return bm
