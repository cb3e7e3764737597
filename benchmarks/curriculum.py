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

from ..models.core.checks import Bool, Int, Seed, divides, validated
from ..models.core.data_checks import check_labelled
from .curriculum_score import ClassOrder, as_class_list
from .datasets import IndexedSubset
from .online import split_online


def select_classes(dataset: Dataset, classes: Sequence[int]) -> IndexedSubset:
    """The items of ``dataset`` whose label is in ``classes`` (keeps ``.targets``)."""
    targets = check_labelled(dataset, "dataset")
    classes = as_class_list(classes, "classes")
    present = set(torch.unique(targets).tolist())
    absent = sorted(set(classes) - present)
    if absent:
        raise ValueError(
            f"classes {absent} have no samples in the dataset (present: {sorted(present)})"
        )
    mask = torch.isin(targets, torch.tensor(classes, dtype=torch.long))
    return IndexedSubset(dataset, torch.nonzero(mask).flatten())


@validated(divides("classes_per_experience", "order", lambda k, n: "classes_per_experience must "
                   f"divide len(order)={n}, got {k}"),
           order=ClassOrder(), classes_per_experience=Int(1), online=Bool(),
           experience_size=Int(1), seed=Seed())
def curriculum_benchmark(
    train: Dataset,
    test: Dataset,
    order: Sequence[int],
    *,
    classes_per_experience: int = 1,
    online: bool = False,
    experience_size: int = 64,
    seed: int = 0,
) -> CLScenario:
    """Class-incremental benchmark whose experiences follow ``order`` exactly.

    Experience ``i`` holds classes ``order[i*k:(i+1)*k]`` (``k =
    classes_per_experience``); labels keep their original values. Built with
    Avalanche's ``nc_benchmark(..., fixed_class_order=order)``.

    Args:
        train, test: datasets with integer ``.targets``; classes not in ``order``
            are left out of both (as with :func:`select_classes`).
        order: class labels in teaching order (all classes of ``train`` or a subset).
        classes_per_experience: classes per experience; must divide ``len(order)``.
        online: if True, ``train_stream`` is the single-pass online stream of
            :func:`split_online` (mini-experiences of ``experience_size`` items,
            which know their classes and their last mini-experience); the
            offline per-class stream is ``train_stream`` of ``online=False``.
        experience_size: items per online mini-experience.
        seed: shuffle seed of the online split.

    Raises:
        TypeError: an argument of the wrong kind (a non-integer label or size,
            a non-bool ``online``, datasets without ``.targets``), naming it.
        ValueError: bad order (repeats, fewer than 2 classes), classes of
            ``order`` with no samples in ``train`` or ``test``,
            ``classes_per_experience`` < 1 or not dividing ``len(order)``,
            ``experience_size`` < 1, ``seed`` < 0.
    """
    train_targets = check_labelled(train, "train")
    test_targets = check_labelled(test, "test")
    k = classes_per_experience
    selected = {}
    for name, ds, targets in (("train", train, train_targets), ("test", test, test_targets)):
        present = set(torch.unique(targets).tolist())
        absent = sorted(set(order) - present)
        if absent:
            raise ValueError(f"order holds classes {absent} with no samples in {name}")
        # an order over a subset of the classes: the benchmark is over those classes only
        selected[name] = select_classes(ds, order) if present - set(order) else ds
    train, test = selected["train"], selected["test"]
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
