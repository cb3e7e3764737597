"""Avalanche plugins for training under ``torch.distributed`` (issue #14).

Avalanche 0.6 shards its data loaders with torch's ``DistributedSampler`` when
:class:`avalanche.distributed.DistributedHelper` is initialised, but leaves the
model unwrapped and does not reduce its metrics. Two plugins fill the gaps:

* :class:`ExactShardsPlugin`: training batches from disjoint, contiguous shards
  without the sampler's padding (which repeats items when the experience does
  not divide by the number of processes, so a sum over the shards would count
  them twice), the same number of batches on every process; evaluation on the
  whole experience in every process, so every metric (Avalanche's accuracy,
  :class:`~neve.plugins.CurriculumEffectiveness`) is the one-process value. For
  strategies that learn sums (:class:`~neve.strategies.AnalyticCIL`).
* :class:`DDPPlugin`: wraps the model in ``DistributedDataParallel``
  (``DistributedHelper.wrap_model``) for each training epoch and unwraps it after,
  so a head that grew (``IncrementalClassifier``) or new optimizer parameter
  groups (the slow learner) get a fresh wrapper, and the other plugins see the
  plain model (neve's model contract, ``model.features`` / ``model.classifier``).
"""

from __future__ import annotations

from avalanche.core import SupervisedPlugin
from avalanche.distributed import DistributedHelper
from torch.utils.data import DataLoader

from ..models.arguments import check_int
from ..models.distributed import exact_shard_loader, is_distributed


def _collate(dataset) -> dict:
    collate = getattr(dataset, "collate_fn", None)
    return {} if collate is None else {"collate_fn": collate}


class ExactShardsPlugin(SupervisedPlugin, supports_distributed=True):
    """Exact training shards and whole-experience evaluation under ``torch.distributed``.

    Replaces ``strategy.dataloader`` after Avalanche made it: for training, with
    :func:`neve.models.distributed.exact_shard_loader` over ``adapted_dataset``
    (``train_mb_size``, a seeded shuffle: ``seed + experience index``); for
    evaluation, with a plain loader over the whole ``adapted_dataset``
    (``eval_mb_size``, in order). Does nothing in a single process.

    Args:
        seed: seed of the training shuffle (the same on every process).
        shuffle: shuffle the training items before sharding.
    """

    def __init__(self, seed: int = 0, shuffle: bool = True) -> None:
        super().__init__()
        self.seed = check_int(seed, "seed", minimum=0)
        if not isinstance(shuffle, bool):
            raise TypeError(f"shuffle must be True or False, got {shuffle!r}")
        self.shuffle = shuffle

    def before_training_exp(self, strategy, **kwargs) -> None:
        if not is_distributed():
            return
        data = strategy.adapted_dataset
        index = int(getattr(strategy.experience, "current_experience", 0) or 0)
        strategy.dataloader = exact_shard_loader(
            data, int(strategy.train_mb_size), shuffle=self.shuffle, seed=self.seed + index,
            **_collate(data),
        )

    def before_eval_exp(self, strategy, **kwargs) -> None:
        if not is_distributed():
            return
        data = strategy.adapted_dataset
        strategy.dataloader = DataLoader(data, batch_size=int(strategy.eval_mb_size),
                                         shuffle=False, **_collate(data))

    def state_dict(self) -> dict:
        return {"seed": self.seed, "shuffle": self.shuffle}

    def load_state_dict(self, state: dict) -> None:
        self.seed = check_int(state["seed"], "state's seed", minimum=0)
        self.shuffle = bool(state["shuffle"])


class DDPPlugin(SupervisedPlugin, supports_distributed=True):
    """``DistributedDataParallel`` around the model for each training epoch.

    ``before_training_epoch`` wraps ``strategy.model`` with
    ``DistributedHelper.wrap_model`` (gradients averaged across processes at each
    backward); ``after_training_epoch`` puts the plain model back. Put it after
    the plugins that change the model or the optimizer in ``before_training_epoch``
    (the slow learner's ``norm_stats``), so they see the plain model. Does nothing
    in a single process. No state.
    """

    def before_training_epoch(self, strategy, **kwargs) -> None:
        if is_distributed():
            strategy.model = DistributedHelper.wrap_model(
                DistributedHelper.unwrap_model(strategy.model)
            )

    def after_training_epoch(self, strategy, **kwargs) -> None:
        strategy.model = DistributedHelper.unwrap_model(strategy.model)

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        return None
