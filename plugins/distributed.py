"""Avalanche plugins for training under ``torch.distributed``.

Avalanche 0.6 shards its data loaders with torch's ``DistributedSampler`` when
:class:`avalanche.distributed.DistributedHelper` is initialised, but leaves the
model unwrapped and does not reduce its metrics. Four plugins fill the gaps:

* :class:`WholeEvaluationPlugin`: evaluation on the whole experience in every
  process, so every metric (Avalanche's accuracy,
  :class:`~neve.plugins.CurriculumEffectiveness`) is the one-process value;
  Avalanche evaluates each process on its padded ``DistributedSampler`` shard and
  does not reduce its metrics, so rank 0 logs the accuracy of its shard. SLCA and
  NearestPrototype evaluate this way by themselves.
* :class:`ExactShardsPlugin`: training batches from disjoint, contiguous shards
  without the sampler's padding (which repeats items when the experience does
  not divide by the number of processes, so a sum over the shards would count
  them twice), the same number of batches on every process; evaluation as
  :class:`WholeEvaluationPlugin`. For strategies that learn sums
  (:class:`~neve.strategies.AnalyticCIL`).
* :class:`GlobalBatchPlugin`: training batches for DDP that do not depend on the
  number of processes: each process gets its ``1/W`` part of the same seeded
  global mini-batches of ``train_mb_size`` items (also in one process), and its
  loss is weighted so that DDP's averaged gradient is the gradient of the mean
  loss over the global batch, i.e. the one-process SGD step up to rounding.
* :class:`DDPPlugin`: wraps the model in ``DistributedDataParallel`` for each
  training epoch and unwraps it after, so a head that grew
  (``IncrementalClassifier``) or new optimizer parameter groups (the slow
  learner) get a fresh wrapper, and the other plugins see the plain model
  (neve's model contract, ``model.features`` / ``model.classifier``).

Starting the process group: :func:`neve.plugins.process_group.init_distributed`.
"""

from __future__ import annotations

import torch
from avalanche.core import SupervisedPlugin
from avalanche.distributed import DistributedHelper
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from ..models.core.checks import Bool, Seed, validated
from ..models.core.distributed import (
    exact_shard_loader,
    global_batch_part,
    is_distributed,
    process_group_up,
    rank_and_world,
)
from .process_group import ddp_device_ids


def _collate(dataset) -> dict:
    collate = getattr(dataset, "collate_fn", None)
    return {} if collate is None else {"collate_fn": collate}


def whole_evaluation_loader(strategy) -> DataLoader:
    """The one evaluation-loader policy under several processes: all of the experience, in order.

    A plain loader over ``strategy.adapted_dataset`` in batches of ``eval_mb_size``
    (its ``collate_fn`` if it has one), so every process computes, and rank 0
    logs, the one-process metrics.
    """
    data = strategy.adapted_dataset
    return DataLoader(data, batch_size=int(strategy.eval_mb_size), shuffle=False,
                      **_collate(data))


class WholeEvaluationPlugin(SupervisedPlugin, supports_distributed=True):
    """Every process evaluates the whole experience under ``torch.distributed``.

    ``before_eval_exp`` replaces Avalanche's sharded loader with
    :func:`whole_evaluation_loader`, so the metrics that each process computes, and
    rank 0 logs, are the one-process metrics. Each process does the whole
    evaluation's work. Does nothing in a single process. No state.
    """

    def before_eval_exp(self, strategy, **kwargs) -> None:
        if process_group_up():
            strategy.dataloader = whole_evaluation_loader(strategy)

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        return None


class ExactShardsPlugin(WholeEvaluationPlugin, supports_distributed=True):
    """Exact training shards and whole-experience evaluation under ``torch.distributed``.

    Replaces ``strategy.dataloader`` after Avalanche made it: for training, with
    :func:`neve.models.core.distributed.exact_shard_loader` over ``adapted_dataset``
    (``train_mb_size``, a seeded shuffle: ``seed + experience index``); for
    evaluation, as :class:`WholeEvaluationPlugin`. Does nothing in a single process.
    Inside :func:`~neve.models.core.distributed.working_alone` it gives the whole data
    (Avalanche's loaders would shard it), so a strategy with it runs there as in one process.

    Args:
        seed: seed of the training shuffle (the same on every process).
        shuffle: shuffle the training items before sharding.
    """

    #: Its strategy's loaders are neve's, not Avalanche's: safe inside ``working_alone``.
    sets_loaders = True

    @validated(seed=Seed(), shuffle=Bool())
    def __init__(self, seed: int = 0, shuffle: bool = True) -> None:
        super().__init__()
        self.seed, self.shuffle = seed, shuffle

    def before_training_exp(self, strategy, **kwargs) -> None:
        if not process_group_up():
            return
        data = strategy.adapted_dataset
        index = int(getattr(strategy.experience, "current_experience", 0) or 0)
        strategy.dataloader = exact_shard_loader(
            data, int(strategy.train_mb_size), shuffle=self.shuffle, seed=self.seed + index,
            **_collate(data),
        )

    def state_dict(self) -> dict:
        return {"seed": self.seed, "shuffle": self.shuffle}

    def load_state_dict(self, state: dict) -> None:
        self.seed = Seed().check(state["seed"], "state's seed")
        self.shuffle = Bool().check(state["shuffle"], "state's shuffle")


class GlobalBatchPlugin(SupervisedPlugin, supports_distributed=True):
    """The same global mini-batches for any number of processes, for DDP training.

    ``train_mb_size`` is the global batch: with ``W`` processes each trains on
    ``train_mb_size / W`` items of it (a ValueError when ``W`` does not divide
    ``train_mb_size``). Each epoch, ``strategy.dataloader`` is replaced by a loader
    over ``adapted_dataset`` that draws a permutation from a generator seeded with
    ``seed + experience index`` (the same draws on every process, a new
    permutation each epoch, as one process's shuffling loader) and yields this
    process's :func:`neve.models.core.distributed.global_batch_part`; ``before_backward`` multiplies
    ``strategy.loss`` by the part's weight. Active in one process too (weight 1),
    so one process and ``W`` processes see the same global batches, without
    ``DistributedSampler``'s padding (repeated items) or its fixed seed.

    With :class:`DDPPlugin` (gradients averaged over processes), every process
    takes the one-process SGD step up to rounding, provided the loss is a mean
    over the items of the batch (``CrossEntropyLoss()``; SLCA's current-class
    loss when every item is of the current classes, i.e. without replay, since
    ignored targets change a part's count) and the model has no batch-norm or
    dropout in training mode (batch statistics and random masks differ per part).
    The loss that metrics see is the weighted one. Evaluation loaders are left
    as Avalanche makes them (sharded): add :class:`WholeEvaluationPlugin` for
    one-process metrics (SLCA evaluates that way by itself).

    Args:
        seed: seed of the training permutations.
    """

    @validated(seed=Seed())
    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        self.seed = seed
        self._generator: torch.Generator | None = None
        self._weights: list[float] = []
        self._iteration = 0

    def before_training_exp(self, strategy, **kwargs) -> None:
        _, world = rank_and_world()
        size = int(strategy.train_mb_size)
        if size % world:
            raise ValueError(
                f"train_mb_size={size} is the global batch and must divide by the "
                f"{world} processes (each takes train_mb_size / {world} items)"
            )
        index = int(getattr(strategy.experience, "current_experience", 0) or 0)
        self._generator = torch.Generator().manual_seed(self.seed + index)

    def before_training_epoch(self, strategy, **kwargs) -> None:
        rank, world = rank_and_world()
        data = strategy.adapted_dataset
        order = torch.randperm(len(data), generator=self._generator)
        batches, self._weights = global_batch_part(order, int(strategy.train_mb_size),
                                                   rank, world)
        self._iteration = 0
        strategy.dataloader = DataLoader(data, batch_sampler=batches, **_collate(data))

    def before_backward(self, strategy, **kwargs) -> None:
        weight = self._weights[self._iteration]
        if weight != 1.0:
            strategy.loss = strategy.loss * weight

    def after_training_iteration(self, strategy, **kwargs) -> None:
        self._iteration += 1

    def state_dict(self) -> dict:
        return {"seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        self.seed = Seed().check(state["seed"], "state's seed")


class DDPPlugin(SupervisedPlugin, supports_distributed=True):
    """``DistributedDataParallel`` around the model for each training epoch.

    ``before_training_epoch`` wraps ``strategy.model`` in
    ``DistributedDataParallel`` on the model's own device (:func:`ddp_device_ids`;
    not ``DistributedHelper.wrap_model``, which picks ``cuda:RANK``), so gradients
    are averaged across processes at each backward; ``after_training_epoch`` puts
    the plain model back. Put it after
    the plugins that change the model or the optimizer in ``before_training_epoch``
    (the slow learner's ``norm_stats``), so they see the plain model. Does nothing
    in a single process. No state.
    """

    def before_training_epoch(self, strategy, **kwargs) -> None:
        if is_distributed():
            model = DistributedHelper.unwrap_model(strategy.model)
            strategy.model = DistributedDataParallel(
                model, device_ids=ddp_device_ids(model), find_unused_parameters=True)

    def after_training_epoch(self, strategy, **kwargs) -> None:
        strategy.model = DistributedHelper.unwrap_model(strategy.model)

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        return None
