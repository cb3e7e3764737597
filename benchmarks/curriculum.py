"""Curriculum-ordered class-incremental benchmarks (Singh et al., "Learning to Learn:
How to Continuously Teach Humans and Machines", ICCV 2023).

The method is split over four modules of :mod:`neve.benchmarks`:

* :mod:`~neve.benchmarks.curriculum_score` -- prototypes, distances and the CD
  score of a class order (the paper's equations);
* :mod:`~neve.benchmarks.curriculum_search` -- exhaustive, beam and local search
  for the best orders;
* :mod:`~neve.benchmarks.curriculum_designer` -- :class:`CurriculumDesigner`,
  the teacher, the fitted state and the plot;
* this module -- an Avalanche benchmark that teaches the classes in a given
  order (:func:`curriculum_benchmark`), offline or online
  (:func:`~neve.benchmarks.online.split_online`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from avalanche.benchmarks import nc_benchmark
from avalanche.benchmarks.scenarios.generic_scenario import CLScenario
from torch.utils.data import Dataset

from .curriculum_score import as_class_list, check_order
from .datasets import IndexedSubset
from .deprecation import NOT_GIVEN, renamed_keyword
from .online import split_online


def select_classes(dataset: Dataset, classes: Sequence[int]) -> IndexedSubset:
    """The items of ``dataset`` whose label is in ``classes`` (keeps ``.targets``)."""
    classes = as_class_list(classes, "classes")
    targets = torch.as_tensor(dataset.targets).long()
    present = set(torch.unique(targets).tolist())
    absent = sorted(set(classes) - present)
    if absent:
        raise ValueError(
            f"classes {absent} have no samples in the dataset (present: {sorted(present)})"
        )
    mask = torch.isin(targets, torch.tensor(classes))
    return IndexedSubset(dataset, torch.nonzero(mask).flatten())


def curriculum_benchmark(
    train: Dataset,
    test: Dataset,
    order: Sequence[int],
    *,
    classes_per_experience: int = 1,
    online: bool = False,
    experience_size: int = 64,
    seed: int = 0,
    mb_size: int = NOT_GIVEN,
) -> CLScenario:
    """Class-incremental benchmark whose experiences follow ``order`` exactly.

    Experience ``i`` holds classes ``order[i*k:(i+1)*k]`` (``k =
    classes_per_experience``); labels keep their original values. Built with
    Avalanche's ``nc_benchmark(..., fixed_class_order=order)``.

    Args:
        train, test: datasets with ``.targets``; every class present in ``train``
            must appear in ``order`` (use :func:`select_classes` to pick a subset).
        order: class labels in teaching order.
        classes_per_experience: classes per experience; must divide ``len(order)``.
        online: if True, ``train_stream`` is the single-pass online stream of
            :func:`split_online` (mini-experiences of ``experience_size`` items,
            which know their classes and their last mini-experience); the
            offline per-class stream is ``train_stream`` of ``online=False``.
        experience_size: items per online mini-experience.
        seed: shuffle seed of the online split.
        mb_size: deprecated name of ``experience_size``.

    Raises:
        ValueError: bad order (repeats, misses a class of ``train``, fewer than 2
            classes), classes of ``order`` with no samples in ``train`` or
            ``test``, or ``classes_per_experience`` not dividing ``len(order)``.
    """
    experience_size = renamed_keyword(
        experience_size, mb_size, new="experience_size", old="mb_size", default=64
    )
    order = check_order(order)
    for name, ds in (("train", train), ("test", test)):
        if not hasattr(ds, "targets"):
            raise ValueError(f"{name} must have .targets")
    k = int(classes_per_experience)
    if k < 1 or len(order) % k:
        raise ValueError(
            f"classes_per_experience must be >= 1 and divide len(order)={len(order)}, got {k}"
        )
    train_classes = set(torch.unique(torch.as_tensor(train.targets)).tolist())
    test_classes = set(torch.unique(torch.as_tensor(test.targets)).tolist())
    for name, present in (("train", train_classes), ("test", test_classes)):
        absent = sorted(set(order) - present)
        if absent:
            raise ValueError(f"order holds classes {absent} with no samples in {name}")
    missing = sorted(train_classes - set(order))
    if missing:
        raise ValueError(
            f"order misses classes {missing} present in train; select the classes to use "
            "with neve.benchmarks.select_classes first"
        )
    extra_test = sorted(test_classes - set(order))
    if extra_test:
        test = select_classes(test, order)
    bm = nc_benchmark(
        train,
        test,
        n_experiences=len(order) // k,
        task_labels=False,
        fixed_class_order=order,
        class_ids_from_zero_from_first_exp=False,
    )
    if not online:
        return bm
    online_stream = split_online(bm.train_stream, experience_size, shuffle=True, seed=seed)
    return CLScenario([online_stream, bm.test_stream])
