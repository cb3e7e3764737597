"""Si-Blurry: the stochastic-incremental blurry stream of generalized class-incremental learning.

Moon et al., "Online Class Incremental Learning on Stochastic Blurry Task
Boundary via Mask and Visual Prompt Tuning" (ICCV 2023), sec. 3 (the Si-Blurry
scenario), also the evaluation stream of G-ACIL (Zhuang et al., 2024). With
``C`` classes, ``T`` tasks, ``N = disjoint_class_ratio`` and
``M = blurry_sample_ratio``, the default rules (``rules="reference"``) are those
of the authors' sampler (its stochastic branch, the one their scripts run):

1. class counts: ``floor(C N)`` *disjoint* classes (each in one task only),
   rounded down to a multiple of ``T``; the rest are *blurry* classes, their
   count rounded down to a multiple of ``T`` too; the classes left over (fewer
   than ``2 T``) are dropped from training and from the test stream;
2. in a random class order, each kind is cut into ``T`` groups at ``T - 1``
   points drawn uniformly from ``{0, ..., K - 1}`` (``K`` classes of the kind)
   and sorted, with no redraw: the last task always owns a class of each kind,
   the first is often short, a task may own none (or be empty);
3. ``floor(M B)`` of the ``B`` blurry-class samples are moved, cut into ``T``
   random shares in the same way; task ``t`` gives up the first ``share_t`` of its
   blurry-class samples in dataset order (all of them if it has fewer);
4. the given-up samples are pooled and shuffled, and each task in turn is dealt
   its nominal ``share_t`` from the pool (late tasks get less when the pool runs
   short), so blurring changes the task sizes; each task's samples are shuffled.

``rules="balanced"`` is neve's earlier variant: ``round(C N)`` disjoint classes
and every class kept, cut points redrawn until every task owns a class, random
samples blurred, and each task dealt back exactly as many as it gave up.

In the online variant the tasks are cut into experiences of ``experience_size``
samples, in the task's shuffled order (:func:`~neve.benchmarks.online.split_online`:
each experience knows its classes, so an ``IncrementalClassifier`` can grow on it).
Evaluate on the classes seen so far with
:func:`~neve.plugins.seen_classes_stream` or
:class:`~neve.plugins.online_metrics.SeenClassesEvaluation`.
"""

from __future__ import annotations

import warnings
from fractions import Fraction

import torch
from avalanche.benchmarks.scenarios.dataset_scenario import benchmark_from_datasets
from avalanche.benchmarks.scenarios.generic_scenario import CLScenario
from avalanche.benchmarks.scenarios.supervised import with_classes_timeline
from avalanche.benchmarks.scenarios.task_aware import with_task_labels
from avalanche.benchmarks.utils.classification_dataset import (
    _as_taskaware_supervised_classification_dataset,
)
from torch.utils.data import Dataset

from ..models.core.checks import Bool, Int, OneOf, Real, Seed, validate
from ..models.core.data_checks import check_labelled, check_labels
from .online import split_online

#: Names of the split's rules; the first is the default.
SPLIT_RULES = ("reference", "balanced")
SPLIT_CHECKS = {
    "n_tasks": Int(1),
    "disjoint_class_ratio": Real(ge=0.0, le=1.0),
    "blurry_sample_ratio": Real(ge=0.0, le=1.0),
    "seed": Seed(),
    "rules": OneOf(*SPLIT_RULES),
}
BENCHMARK_CHECKS = {"experience_size": Int(1), "online": Bool(), "access_task_boundaries": Bool()}
Split = tuple[list[torch.Tensor], list[list[int]], list[list[int]]]


def ratio_floor(count: int, ratio: float) -> int:
    """``floor(count * ratio)`` with ``ratio`` read as the decimal it prints as (0.29 -> 29/100),
    so that a percentage gives the integer arithmetic ``count * percent // 100``."""
    return int(count * Fraction(repr(ratio)))


def reference_class_counts(n_classes: int, n_tasks: int, disjoint_ratio: float) -> tuple[int, int]:
    """``(disjoint, blurry)`` class counts of the reference rules: ``floor(C N)`` and the rest,
    each rounded down to a multiple of ``n_tasks``."""
    n_disjoint = ratio_floor(n_classes, disjoint_ratio) // n_tasks * n_tasks
    return n_disjoint, (n_classes - n_disjoint) // n_tasks * n_tasks


def reference_cuts(n_items: int, n_groups: int, gen: torch.Generator) -> list[int]:
    """``[0, c_1, ..., c_{G-1}, n_items]``: ``G - 1`` sorted draws from ``{0, ..., n_items - 1}``
    (no redraw); ``[0] * G + [0]`` without a draw when ``n_items == 0``."""
    if n_items == 0:
        return [0] * (n_groups + 1)
    inner = torch.randint(0, n_items, (n_groups - 1,), generator=gen).sort().values
    return [0, *inner.tolist(), n_items]


def _balanced_cuts(n_items: int, n_groups: int, gen: torch.Generator) -> list[int]:
    """Sorted cut points ``[0, c_1, ..., n_items]``, inner ones drawn from ``{0, ..., n_items}``."""
    inner = torch.randint(0, n_items + 1, (n_groups - 1,), generator=gen).sort().values
    return [0, *inner.tolist(), n_items]


def _groups(classes: torch.Tensor, cuts: list[int]) -> list[list[int]]:
    return [classes[cuts[t] : cuts[t + 1]].tolist() for t in range(len(cuts) - 1)]


def _shuffled(idx: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    return idx[torch.randperm(len(idx), generator=gen)]


def reference_split(targets: torch.Tensor, classes: torch.Tensor, n_tasks: int,
                    disjoint_ratio: float, blurry_ratio: float, gen: torch.Generator) -> Split:
    """The reference rules (module docstring, 1-4) on labels ``targets [N]`` whose sorted
    distinct values are ``classes``; ``1 <= n_tasks <= len(classes)``, ratios in [0, 1].

    Draws in this order from ``gen``: the class order, the disjoint cuts, the blurry
    cuts, the shares, the pool's order, each task's order.
    """
    n_disjoint, n_blurry = reference_class_counts(len(classes), n_tasks, disjoint_ratio)
    order = classes[torch.randperm(len(classes), generator=gen)]
    disjoint_groups = _groups(order[:n_disjoint], reference_cuts(n_disjoint, n_tasks, gen))
    blurry_groups = _groups(order[n_disjoint : n_disjoint + n_blurry],
                            reference_cuts(n_blurry, n_tasks, gen))
    owner = torch.full((int(classes.max()) + 1,), -1, dtype=torch.long)
    is_blurry = torch.zeros(len(owner), dtype=torch.bool)
    for t in range(n_tasks):
        owner[disjoint_groups[t] + blurry_groups[t]] = t
        is_blurry[blurry_groups[t]] = True
    task_of, blurry_sample = owner[targets], is_blurry[targets]
    own_disjoint = [torch.nonzero(task_of.eq(t) & ~blurry_sample).flatten() for t in range(n_tasks)]
    own_blurry = [torch.nonzero(task_of.eq(t) & blurry_sample).flatten() for t in range(n_tasks)]
    n_moved = ratio_floor(int(blurry_sample.sum()), blurry_ratio)
    dealt = [own_blurry[t][:0] for t in range(n_tasks)]
    if n_moved > 0:
        share = reference_cuts(n_moved, n_tasks, gen)
        nominal = [share[t + 1] - share[t] for t in range(n_tasks)]
        pool = _shuffled(torch.cat([own_blurry[t][: nominal[t]] for t in range(n_tasks)]), gen)
        own_blurry = [own_blurry[t][nominal[t] :] for t in range(n_tasks)]
        ends = torch.tensor(share[1:]).clamp(max=len(pool)).tolist()
        dealt = [pool[start:end] for start, end in zip([0, *ends[:-1]], ends, strict=True)]
    tasks = [_shuffled(torch.cat([own_disjoint[t], own_blurry[t], dealt[t]]), gen)
             for t in range(n_tasks)]
    return tasks, disjoint_groups, blurry_groups


def balanced_split(targets: torch.Tensor, classes: torch.Tensor, n_tasks: int,
                   disjoint_ratio: float, blurry_ratio: float, gen: torch.Generator) -> Split:
    """The balanced rules on labels ``targets [N]`` with sorted distinct values ``classes``.

    Guarantees: every class is used and every sample lies in exactly one task;
    ``round(C N)`` classes are disjoint; every task owns at least one class (the
    cut points, drawn from ``{0, ..., K}``, are redrawn until it does); task ``t``
    gives up ``min(share_t, its blurry samples)`` random blurry-class samples,
    ``int(M B)`` shared out at random cuts, and is dealt back exactly as many.
    """
    order = classes[torch.randperm(len(classes), generator=gen)]
    n_disjoint = int(round(disjoint_ratio * len(classes)))
    disjoint, blurry = order[:n_disjoint], order[n_disjoint:]
    while True:
        disjoint_groups = _groups(disjoint, _balanced_cuts(len(disjoint), n_tasks, gen))
        blurry_groups = _groups(blurry, _balanced_cuts(len(blurry), n_tasks, gen))
        if all(disjoint_groups[t] or blurry_groups[t] for t in range(n_tasks)):
            break
    owner = torch.full((int(classes.max()) + 1,), -1, dtype=torch.long)
    for t in range(n_tasks):
        owner[disjoint_groups[t] + blurry_groups[t]] = t
    is_blurry = torch.zeros_like(owner, dtype=torch.bool)
    is_blurry[blurry] = True
    own_disjoint, own_blurry = [], []
    for t in range(n_tasks):
        idx = _shuffled(torch.nonzero(owner[targets] == t).flatten(), gen)
        blur_mask = is_blurry[targets[idx]]
        own_disjoint.append(idx[~blur_mask])
        own_blurry.append(idx[blur_mask])
    n_moved = int(blurry_ratio * sum(len(b) for b in own_blurry))
    share = _balanced_cuts(n_moved, n_tasks, gen)
    moved, kept = [], []
    for t in range(n_tasks):
        k = min(share[t + 1] - share[t], len(own_blurry[t]))
        moved.append(own_blurry[t][:k])
        kept.append(own_blurry[t][k:])
    dealt = list(torch.split(_shuffled(torch.cat(moved), gen), [len(m) for m in moved]))
    tasks = [_shuffled(torch.cat([own_disjoint[t], kept[t], dealt[t]]), gen)
             for t in range(n_tasks)]
    return tasks, disjoint_groups, blurry_groups


def si_blurry_split(
    targets: torch.Tensor,
    *,
    n_tasks: int = 5,
    disjoint_class_ratio: float = 0.5,
    blurry_sample_ratio: float = 0.1,
    seed: int = 0,
    rules: str = "reference",
) -> Split:
    """Si-Blurry task split of a labelled training set (Moon et al., ICCV 2023, sec. 3).

    Args:
        targets: integer labels ``[N]``.
        n_tasks: number of tasks (>= 1, <= the number of classes).
        disjoint_class_ratio: share ``N`` of classes that appear in one task only, in [0, 1].
        blurry_sample_ratio: share ``M`` of the blurry classes' samples moved to
            other tasks, in [0, 1].
        seed: the split depends on nothing else (an integer >= 0).
        rules: ``"reference"`` (the authors' sampler, see the module docstring;
            with labels ``0..C-1`` it gives their indices for the same seed) or
            ``"balanced"`` (every class used, every task owns a class and gets
            back as many blurred samples as it gave up; see :func:`balanced_split`).

    Returns:
        ``(task_indices, disjoint_classes, blurry_classes)``: for each of the
        ``n_tasks`` tasks the (shuffled) indices into ``targets`` (possibly empty
        under ``"reference"``), and the disjoint and blurry classes it owns. Under
        ``"reference"`` the dropped classes are in neither list, their samples in
        no task, and a ``UserWarning`` names them.

    Raises:
        TypeError: an argument of the wrong kind (float or string counts,
            non-integer labels), naming it.
        ValueError: labels not 1-d, negative or non-integer; ``n_tasks`` outside
            [1, number of classes]; a ratio outside [0, 1]; ``seed`` < 0; unknown ``rules``.
    """
    targets = check_labels(targets, "targets")
    args = validate(SPLIT_CHECKS, {"n_tasks": n_tasks, "disjoint_class_ratio": disjoint_class_ratio,
                                   "blurry_sample_ratio": blurry_sample_ratio, "seed": seed,
                                   "rules": rules})
    classes = torch.unique(targets)
    if args["n_tasks"] > len(classes):
        raise ValueError(f"n_tasks must be in [1, number of classes = {len(classes)}], "
                         f"got {args['n_tasks']}")
    split = reference_split if args["rules"] == "reference" else balanced_split
    tasks, disjoint_groups, blurry_groups = split(
        targets, classes, args["n_tasks"], args["disjoint_class_ratio"],
        args["blurry_sample_ratio"], torch.Generator().manual_seed(args["seed"]))
    used = {c for group in disjoint_groups + blurry_groups for c in group}
    dropped = [c for c in classes.tolist() if c not in used]
    if dropped:
        warnings.warn(
            f"si_blurry_split: rules='reference' rounds the disjoint and blurry class counts "
            f"down to multiples of n_tasks={args['n_tasks']} and drops classes {dropped} "
            "from training (and from the test stream); rules='balanced' keeps every class",
            UserWarning, stacklevel=2)
    return tasks, disjoint_groups, blurry_groups


def si_blurry_benchmark(
    train: Dataset,
    test: Dataset,
    *,
    n_tasks: int = 5,
    disjoint_class_ratio: float = 0.5,
    blurry_sample_ratio: float = 0.1,
    seed: int = 0,
    rules: str = "reference",
    online: bool = False,
    experience_size: int = 10,
    access_task_boundaries: bool = False,
) -> CLScenario:
    """Si-Blurry generalized class-incremental benchmark (Moon et al., ICCV 2023).

    Args:
        train, test: datasets with integer ``.targets`` (any dataset Avalanche's
            ``nc_benchmark`` accepts).
        n_tasks, disjoint_class_ratio, blurry_sample_ratio, seed, rules: see
            :func:`si_blurry_split`.
        online: if True, ``train_stream`` is the online stream of
            ``experience_size``-sample experiences (:func:`split_online`, each
            with its ``classes_in_this_experience``); ``task_stream`` keeps the
            task experiences.
        experience_size: samples per online experience.
        access_task_boundaries: whether strategies may read the online
            experiences' ``is_first_subexp`` / ``is_last_subexp``.

    Returns:
        A ``CLScenario`` with ``train_stream`` (one experience per non-empty task,
        in task order, whose ``classes_in_this_experience`` include the blurred
        samples' classes) and ``test_stream`` (one experience per task owning
        classes with test samples: those classes' test samples), all with task
        label 0 (metrics keys as ``nc_benchmark``'s), plus attributes
        ``disjoint_classes`` and ``blurry_classes`` (per task), ``task_indices``
        (indices into ``train`` per task), ``train_tasks`` and ``test_tasks`` (the
        task of each experience of the task and test streams) and
        ``dropped_classes`` (used nowhere). An empty task has no experience: the
        reference trains on it for zero steps, and an Avalanche experience cannot
        be empty. The test stream holds the used classes only; evaluate on the
        classes seen so far with :func:`~neve.plugins.seen_classes_stream`.
    """
    args = validate(BENCHMARK_CHECKS, {"experience_size": experience_size, "online": online,
                                       "access_task_boundaries": access_task_boundaries})
    train_targets = check_labelled(train, "train")
    test_targets = check_labelled(test, "test")
    tasks, disjoint_groups, blurry_groups = si_blurry_split(
        train_targets, n_tasks=n_tasks, disjoint_class_ratio=disjoint_class_ratio,
        blurry_sample_ratio=blurry_sample_ratio, seed=seed, rules=rules)
    av_train = _as_taskaware_supervised_classification_dataset(train)
    av_test = _as_taskaware_supervised_classification_dataset(test)
    train_tasks = [t for t, idx in enumerate(tasks) if len(idx)]
    owned = [torch.nonzero(torch.isin(test_targets, torch.tensor(d + b, dtype=torch.long)))
             .flatten() for d, b in zip(disjoint_groups, blurry_groups, strict=True)]
    test_tasks = [t for t, idx in enumerate(owned) if len(idx)]
    bm = with_task_labels(with_classes_timeline(benchmark_from_datasets(
        train=[av_train.subset(tasks[t].tolist()) for t in train_tasks],
        test=[av_test.subset(owned[t].tolist()) for t in test_tasks])))
    if args["online"]:
        online_stream = split_online(bm.train_stream, args["experience_size"], shuffle=False,
                                     access_task_boundaries=args["access_task_boundaries"])
        task_stream = bm.train_stream
        task_stream.name = "task"
        bm = CLScenario([online_stream, bm.test_stream, task_stream])
    used = {c for group in disjoint_groups + blurry_groups for c in group}
    bm.disjoint_classes = disjoint_groups
    bm.blurry_classes = blurry_groups
    bm.task_indices = tasks
    bm.train_tasks, bm.test_tasks = train_tasks, test_tasks
    bm.dropped_classes = [c for c in torch.unique(train_targets).tolist() if c not in used]
    return bm

