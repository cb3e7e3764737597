"""What neve's plugins read of an experience: its classes, its training data, and checks of it.

Pure helpers on Avalanche strategies and datasets, shared by the plugins so that
every plugin reads an experience, and refuses bad data, the same way.
"""

from __future__ import annotations

import torch
from avalanche.training import JointTraining
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..models.core.data_checks import check_labels


def training_data(strategy) -> Dataset:
    """The data of the phase just trained, eval-mode transforms.

    ``strategy.experience.dataset``; for Avalanche's ``JointTraining``, which
    trains once on all experiences and leaves ``strategy.experience`` at the
    first, the joint training set ``strategy.adapted_dataset``.
    """
    if isinstance(strategy, JointTraining):
        return strategy.adapted_dataset.eval()
    return strategy.experience.dataset.eval()


def training_datasets(strategy) -> list[Dataset]:
    """The data this training phase is about to learn (eval transforms where they exist).

    The experience's dataset; every experience's for ``JointTraining``.
    """
    datasets = [exp.dataset for exp in strategy._experiences] \
        if isinstance(strategy, JointTraining) else [strategy.experience.dataset]
    return [d.eval() if hasattr(d, "eval") else d for d in datasets]


def trained_parameters(extractor: object, optimizer: object) -> list[nn.Parameter]:
    """The parameters of ``extractor`` (an ``nn.Module``) that ``optimizer`` updates."""
    if not isinstance(extractor, nn.Module) or optimizer is None:
        return []
    stepped = {id(p) for group in getattr(optimizer, "param_groups", ()) for p in group["params"]}
    return [p for p in extractor.parameters() if p.requires_grad and id(p) in stepped]


@torch.no_grad()
def check_experience_data(dataset: Dataset, batch_size: int, *, max_classes: int,
                          values: bool = True, dtype: torch.dtype | None = None,
                          skip: str = "", cap: str = "max_classes", finite: bool = True) -> None:
    """Refuse an experience's data before anything learns from it (one pass, no gradients).

    Always: a non-empty dataset whose labels (``dataset.targets``; neve's one rule:
    integers ``>= 0``) are below ``max_classes``. With ``values``, one pass over the
    data in order, with its own generator (the global random state is untouched):
    the labels its items give must be ``dataset.targets``; floating-point inputs
    must be finite and, when ``dtype`` is given, of that dtype (the model's). ``cap``:
    the argument that set ``max_classes``, for the messages; ``finite=False`` leaves the inputs'
    values to the learner (labels and dtypes are still checked).

    Raises:
        ValueError, TypeError: naming the labels, inputs or features and the first bad items.
    """
    if len(dataset) == 0:
        raise ValueError("the experience's dataset is empty: there is nothing to learn")
    targets = getattr(dataset, "targets", None)
    if targets is not None:
        targets = check_labels(targets, "the experience's targets (labels)", below=max_classes,
                               cap=cap)
    if not values:
        return
    seen = 0
    for batch in DataLoader(dataset, batch_size=batch_size, generator=torch.Generator()):
        x, y = batch[0], check_labels(batch[1], "the experience's item labels",
                                      below=max_classes, cap=cap)
        where = f"(items {seen}-{seen + len(y) - 1} of {len(dataset)})"
        if targets is not None and not torch.equal(y, targets[seen:seen + len(y)]):
            raise ValueError(f"the experience's targets (labels) disagree with the labels its "
                             f"items give {where}: fix the dataset's .targets")
        if isinstance(x, torch.Tensor) and x.is_floating_point():
            if dtype is not None and x.dtype != dtype:
                raise TypeError(f"the experience's inputs are {x.dtype}, the model computes in "
                                f"{dtype}: convert the data or the model")
            if finite and not bool(torch.isfinite(x).all()):
                how = f", or pass {skip} to skip this check" if skip else ""
                raise ValueError(f"the experience's inputs contain NaN or inf {where}; nothing "
                                 f"was learned. Clean the data{how}")
        seen += len(y)


def experience_classes(experience) -> list[int]:
    """The classes of an experience, ascending.

    ``experience.classes_in_this_experience`` where the benchmark has a class
    timeline; otherwise (Avalanche's ``benchmark_from_datasets``,
    ``split_online_stream``) the distinct targets of ``experience.dataset``.
    """
    classes = getattr(experience, "classes_in_this_experience", None)
    if classes is None:
        targets = experience.dataset.targets
        uniques = getattr(targets, "uniques", None)
        classes = uniques if uniques is not None else set(torch.as_tensor(targets).tolist())
    return sorted(int(c) for c in classes)
