"""What neve's plugins read of an experience: its training data, and checks of it before use.

Pure helpers on Avalanche strategies and datasets, shared by the plugins so that
every plugin reads an experience, and refuses bad data, the same way.
"""

from __future__ import annotations

import torch
from avalanche.training import JointTraining
from torch import nn
from torch.utils.data import DataLoader, Dataset


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


def check_finite_inputs(dataset: Dataset, batch_size: int, check_values: bool = True,
                        skip: str = "") -> None:
    """ValueError for an empty ``dataset``, or (``check_values``) one whose inputs hold NaN/inf.

    One pass over the data in order (no model), with its own generator so the
    global random state is untouched. Only floating-point inputs are checked.
    ``skip``: how to turn the check off, for the message.
    """
    if len(dataset) == 0:
        raise ValueError("the experience's dataset is empty: there is nothing to learn")
    if not check_values:
        return
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False,
                        generator=torch.Generator())
    seen = 0
    for batch in loader:
        x = batch[0]
        if isinstance(x, torch.Tensor) and x.is_floating_point():
            bad = ~torch.isfinite(x.reshape(len(x), -1)).all(dim=1)
            if bool(bad.any()):
                first = seen + int(bad.nonzero()[0])
                raise ValueError(
                    f"the experience's inputs contain NaN or inf (item {first} of "
                    f"{len(dataset)}); nothing was learned. Clean the data"
                    + (f", or pass {skip} to skip this check" if skip else ""))
        seen += len(x)
