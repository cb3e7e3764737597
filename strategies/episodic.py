"""Few-shot continual baselines for CFSL and instance-test episodes, on frozen features.

Kowadlo et al. (2022) compare, on the instance test, a prototype classifier
(ProtoNets), fine-tuning of a pretrained network (Pretrain+Tune, lr 0.01, a few
steps per support set) and the same with replay of recent support sets. Here
the pretrained network is a frozen backbone (episodes are turned into features
by :func:`neve.benchmarks.encode_episodes`), so each baseline is a small
Avalanche strategy on feature vectors:

* :func:`pretrain_tune` -- Avalanche ``Naive`` fine-tuning a linear head; with
  ``replay_sets > 0`` it adds Avalanche's ``ReplayPlugin`` whose storage is
  :class:`RecentSetsBuffer` (the last ``L`` support sets, ``k`` samples per step,
  as in the paper's replay setting);
* :class:`~neve.strategies.nearest_prototype.NearestPrototype` -- nearest class
  mean (Avalanche's ``NCMClassifier``) on L2-normalised features, a ProtoNet-like
  learner with fixed embeddings (its own module).

The authors' own Pretrain+Tune tunes ALL layers of a small pretrained conv net
(:func:`neve.models.convnet_training.pretrain_convnet`) with a fresh head:
:func:`tune_network`, on image episodes, with the same replay option.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Sequence
from types import MappingProxyType

import torch
from avalanche.benchmarks.utils.classification_dataset import (
    _make_taskaware_tensor_classification_dataset,
)
from avalanche.benchmarks.utils.utils import concat_datasets
from avalanche.evaluation.metrics import accuracy_metrics
from avalanche.training.plugins import EvaluationPlugin, ReplayPlugin
from avalanche.training.storage_policy import ExemplarsBuffer
from avalanche.training.supervised import Naive

from ..models.convnets import TunedNetwork
from ..models.core.checks import Bool, Device, Instance, Int, Real, Seed, validated
from ..models.core.distributed import is_distributed

# (support sets S) -> (last L sets kept, k samples per step), Kowadlo et al. (2022), replay
PAPER_REPLAY_SETTINGS = MappingProxyType(
    {20: (10, 5), 10: (5, 8), 4: (2, 8), 2: (1, 5), 1: (0, 0)}
)

# a mini-batch size larger than any support set: each set is one mini-batch
WHOLE_SUPPORT_SET = 100_000


@validated(support_sets=Int(1))
def paper_replay_settings(support_sets: int) -> tuple[int, int]:
    """``(L, k)`` of the paper's replay runs for ``support_sets`` sets of 20 images.

    Other values of ``S`` get ``L = S // 2`` (the buffer holds about half the
    episode, as in all the paper's settings) and ``k = 8``.
    """
    return PAPER_REPLAY_SETTINGS.get(support_sets, (support_sets // 2, 8))


def episode_evaluator() -> EvaluationPlugin:
    """Stream accuracy only, no loggers: what :func:`neve.benchmarks.run_episodes` reads."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return EvaluationPlugin(accuracy_metrics(stream=True), loggers=[])


class RecentSetsBuffer(ExemplarsBuffer):
    """Replay storage holding every item of the last ``max_sets`` experiences.

    The circular buffer of the paper's replay runs: after each support set, the
    set is appended and the oldest set dropped once more than ``max_sets`` are
    held. ``max_size`` bounds the items (oldest sets dropped first).

    Args:
        max_sets: ``L``, the number of recent support sets kept.
        max_size: most items held (``ReplayPlugin`` asserts it equals its ``mem_size``).
    """

    @validated(max_sets=Int(1), max_size=Int(1))
    def __init__(self, max_sets: int, max_size: int = 10_000) -> None:
        super().__init__(max_size)
        self.max_sets = max_sets
        self.sets: list = []

    def post_adapt(self, agent_state, exp) -> None:
        self.sets = (self.sets + [exp.dataset])[-self.max_sets :]
        while len(self.sets) > 1 and sum(len(d) for d in self.sets) > self.max_size:
            self.sets.pop(0)
        self.buffer = concat_datasets(self.sets)

    def update(self, strategy, **kwargs) -> None:
        """What ``ReplayPlugin`` calls after each experience (without the deprecation warning)."""
        self.post_adapt(strategy, strategy.experience)

    def resize(self, strategy, new_size: int) -> None:
        self.max_size = int(new_size)

    def state_dict(self) -> dict:
        """The stored sets as tensors, oldest first, for neve's checkpoint.

        Each set is ``{"inputs": (n, ...), "targets": (n,), "task_labels": (n,)}``:
        its items as the set returns them (after its transforms: a random
        transform's draw is stored, not the transform).
        """
        sets = []
        for dataset in self.sets:
            items = [dataset[i] for i in range(len(dataset))]
            sets.append({
                "inputs": torch.stack([torch.as_tensor(item[0]) for item in items]),
                "targets": torch.as_tensor([int(item[1]) for item in items]),
                "task_labels": torch.as_tensor([int(item[2]) for item in items]),
            })
        return {"max_sets": self.max_sets, "max_size": self.max_size, "sets": sets}

    def load_state_dict(self, state: dict) -> None:
        """Rebuild the sets of :meth:`state_dict` as tensor datasets, same items in the same order.

        Raises:
            ValueError: ``state`` holds other ``max_sets``/``max_size`` than this
                buffer, or malformed sets; the buffer is then unchanged.
        """
        for name in ("max_sets", "max_size"):
            if state.get(name) != getattr(self, name):
                raise ValueError(f"state {name} is {state.get(name)!r}, this buffer's "
                                 f"{getattr(self, name)!r}: build it with the file's {name}")
        sets = []
        for i, entry in enumerate(state["sets"]):
            inputs, targets, tasks = entry["inputs"], entry["targets"], entry["task_labels"]
            sizes = (len(inputs), len(targets), len(tasks))
            if not (targets.dim() == tasks.dim() == 1 and len(set(sizes)) == 1):
                raise ValueError(f"state sets[{i}]: inputs, targets and task_labels of "
                                 f"{sizes} items")
            labels = tasks.tolist()  # one label as one int: Avalanche's constant sequence
            labels = labels[0] if labels and labels.count(labels[0]) == len(labels) else labels
            sets.append(_make_taskaware_tensor_classification_dataset(
                inputs, targets, targets=targets.tolist(), task_labels=labels))
        self.sets = sets
        self.buffer = concat_datasets(sets)


#: The tuning arguments :func:`pretrain_tune` and :func:`tune_network` share.
TUNING = {
    "num_classes": Int(1),
    "lr": Real(gt=0.0),
    "steps_per_set": Int(1),
    "replay_sets": Int(0),
    "replay_samples": Int(1),
    "train_mb_size": Int(1, optional=True),
    "eval_mb_size": Int(1),
    "eval_every": Int(-1),
    "device": Device(),
}


@validated(**TUNING, feature_dim=Int(1))
def pretrain_tune(
    num_classes: int,
    feature_dim: int = 1280,
    *,
    lr: float = 0.01,
    steps_per_set: int = 5,
    replay_sets: int = 0,
    replay_samples: int = 8,
    train_mb_size: int | None = None,
    train_epochs: int | None = None,
    eval_mb_size: int = 1024,
    device: str | torch.device = "cpu",
    plugins: Sequence | None = None,
    evaluator: EvaluationPlugin | None = None,
    eval_every: int = -1,
) -> Naive:
    """Pretrain+Tune: Avalanche ``Naive`` fine-tuning a zero-initialised linear head.

    Each support set is one mini-batch; ``steps_per_set`` SGD steps (lr ``lr``) are
    taken on it (Kowadlo et al., 2022: lr 0.01, 5 steps). With ``replay_sets = L
    > 0``, every step also draws ``replay_samples = k`` items from the last ``L``
    support sets (Avalanche's ``ReplayPlugin`` with a :class:`RecentSetsBuffer`).

    Args:
        num_classes: outputs of the head (N of the N-way episode).
        feature_dim: size of the input features.
        lr: SGD learning rate, finite and > 0.
        steps_per_set: gradient steps per support set (the strategy's ``train_epochs``).
        replay_sets: ``L``; 0 disables replay.
        replay_samples: ``k``, replayed items per step.
        train_mb_size: items per mini-batch; default None: a whole support set.
        train_epochs: fixed to ``steps_per_set`` (None or that value; a ValueError
            otherwise).
        eval_mb_size, device, plugins, eval_every: as for Avalanche's ``Naive``
            (``plugins`` are extra plugins).
        evaluator: default :func:`episode_evaluator`.
    """
    if train_epochs is not None and train_epochs != steps_per_set:
        raise ValueError(
            f"train_epochs is fixed to steps_per_set={steps_per_set} in pretrain_tune, got "
            f"{train_epochs!r}: pass steps_per_set (one SGD step per epoch on a support set)"
        )
    head = torch.nn.Linear(feature_dim, num_classes)
    torch.nn.init.zeros_(head.weight)
    torch.nn.init.zeros_(head.bias)
    return _tuning_strategy(head, lr, steps_per_set, replay_sets, replay_samples,
                            train_mb_size, eval_mb_size, device, plugins, evaluator, eval_every)


def _tuning_strategy(model, lr, steps_per_set, replay_sets, replay_samples, train_mb_size,
                     eval_mb_size, device, plugins, evaluator, eval_every) -> Naive:
    """Avalanche ``Naive`` with SGD on all of ``model``'s parameters, optionally with replay.

    Raises:
        RuntimeError: under ``torch.distributed`` with several processes (see below).
    """
    if is_distributed():
        raise RuntimeError(
            "pretrain_tune and tune_network do not run under torch.distributed: each process "
            "would tune on its shard of every support set, without averaging gradients, and "
            "score its shard of the queries. An episode is a small, independent run: run "
            "episodes in one process, or split the episodes (seeds) over separate jobs. "
            "NearestPrototype is exact under torch.distributed"
        )
    all_plugins = list(plugins or [])
    if replay_sets > 0:
        storage = RecentSetsBuffer(replay_sets)
        all_plugins.append(
            ReplayPlugin(
                mem_size=storage.max_size, batch_size_mem=replay_samples, storage_policy=storage
            )
        )
    return Naive(
        model=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=lr),
        criterion=torch.nn.CrossEntropyLoss(),
        train_mb_size=WHOLE_SUPPORT_SET if train_mb_size is None else train_mb_size,
        train_epochs=steps_per_set,
        eval_mb_size=eval_mb_size,
        device=device,
        plugins=all_plugins,
        evaluator=evaluator if evaluator is not None else episode_evaluator(),
        eval_every=eval_every,
    )


@validated(**TUNING, body=Instance(torch.nn.Module, what="an nn.Module"), head_seed=Seed(),
           freeze_norm_stats=Bool())
def tune_network(
    body: torch.nn.Module,
    num_classes: int,
    *,
    feature_dim: int | None = None,
    lr: float = 0.01,
    steps_per_set: int = 5,
    replay_sets: int = 0,
    replay_samples: int = 8,
    head_seed: int = 0,
    freeze_norm_stats: bool = True,
    train_mb_size: int | None = None,
    eval_mb_size: int = 1024,
    device: str | torch.device = "cpu",
    plugins: Sequence | None = None,
    evaluator: EvaluationPlugin | None = None,
    eval_every: int = -1,
) -> Naive:
    """The authors' Pretrain+Tune: ALL layers of a copy of ``body`` tuned with a fresh head.

    The model is :class:`neve.models.convnets.TunedNetwork` (a deep copy of
    ``body``, so the pretrained net is never changed, plus a new linear head
    of ``num_classes`` outputs seeded by ``head_seed``); each support set is one
    mini-batch and ``steps_per_set`` SGD steps (lr ``lr``) update every
    parameter (Kowadlo et al., 2022: lr 0.01, 5 steps). With
    ``freeze_norm_stats`` BatchNorm layers keep their pretrained statistics (a
    support set may hold one image). Replay as for :func:`pretrain_tune`.

    Args:
        body: the pretrained encoder (e.g. :func:`~neve.models.convnet_training.pretrain_convnet`).
        num_classes: outputs of the fresh head (N of the N-way episode).
        feature_dim: the body's output size (default ``body.feature_dim``).
        Other arguments: as for :func:`pretrain_tune`.
    """
    model = TunedNetwork(copy.deepcopy(body), num_classes, feature_dim,
                         freeze_norm_stats=freeze_norm_stats, head_seed=head_seed)
    return _tuning_strategy(model, lr, steps_per_set, replay_sets, replay_samples,
                            train_mb_size, eval_mb_size, device, plugins, evaluator, eval_every)
