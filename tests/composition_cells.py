"""Builders of the composition matrix (tests/test_composition_matrix.py, issue #11).

Tiny, fast pieces: scikit-learn digits (``neve.benchmarks.digits(seed=0)``), a
frozen random feature block (Flatten, Linear(64, 32), ReLU) with a head, 5 x 2
classes or fewer, 1 epoch. Every run starts from ``RNGManager.set_random_seeds(0)``
and models are built from ``torch.manual_seed(0)``, so two runs of one
configuration give the same numbers.
"""

from __future__ import annotations

import functools
import warnings

import numpy as np
import torch
from avalanche.benchmarks import (
    benchmark_from_datasets,
    class_incremental_benchmark,
    nc_benchmark,
    split_online_stream,
)
from avalanche.benchmarks.utils.classification_dataset import (
    _as_taskaware_supervised_classification_dataset,
)
from avalanche.evaluation.metrics import accuracy_metrics, forgetting_metrics, loss_metrics
from avalanche.models import IncrementalClassifier, MultiHeadClassifier, MultiTaskModule
from avalanche.training import plugins as av_plugins
from avalanche.training import supervised as av
from avalanche.training.determinism.rng_manager import RNGManager
from torch import nn

from neve.benchmarks import LabelledTensorDataset, digits

FEATURE_DIM = 32
N_CLASSES = 10
STREAM_ACC = "Top1_Acc_Stream/eval_phase/test_stream/Task000"
ORDER = [3, 7, 1, 0, 5, 9, 2, 8, 4, 6]  # a fixed, non-sorted class order

# Avalanche strategy contexts, and the plugin form of each (for neve strategies)
STRATEGIES = ["Naive", "Cumulative", "JointTraining", "Replay", "EWC", "LwF", "GDumb", "SI",
              "iCaRL", "GenerativeReplay"]
PLUGIN_OF = {
    "Replay": lambda: av_plugins.ReplayPlugin(mem_size=100),
    "EWC": lambda: av_plugins.EWCPlugin(ewc_lambda=1.0),
    "LwF": lambda: av_plugins.LwFPlugin(alpha=1.0, temperature=2.0),
    "GDumb": lambda: av_plugins.GDumbPlugin(mem_size=200),
    "SI": lambda: av_plugins.SynapticIntelligencePlugin(si_lambda=1.0),
}


# -- data -----------------------------------------------------------------------------
@functools.cache
def digit_sets() -> tuple[LabelledTensorDataset, LabelledTensorDataset]:
    return digits(seed=0)


@functools.cache
def flat_digit_sets() -> tuple[LabelledTensorDataset, LabelledTensorDataset]:
    """Digits as ``[N, 64]`` vectors (input of the feature-vector learners)."""
    return tuple(LabelledTensorDataset(d.data.flatten(1), d.targets) for d in digit_sets())


def split_digits(*, flat: bool = False, task_labels: bool = False, n_experiences: int = 5):
    train, test = flat_digit_sets() if flat else digit_sets()
    return nc_benchmark(train, test, n_experiences=n_experiences, task_labels=task_labels,
                        fixed_class_order=list(range(N_CLASSES)))


def _av(dataset):
    return _as_taskaware_supervised_classification_dataset(dataset)


def build_benchmark(name: str, *, flat: bool = False):
    """The benchmark-builder contexts, all over digits in experiences of 2 classes."""
    train, test = flat_digit_sets() if flat else digit_sets()
    if name == "nc_fixed_order":
        return nc_benchmark(train, test, n_experiences=5, task_labels=False,
                            fixed_class_order=ORDER)
    if name == "class_incremental_benchmark":
        return class_incremental_benchmark({"train": _av(train), "test": _av(test)},
                                           class_order=ORDER, num_experiences=5)
    if name == "benchmark_from_datasets":
        parts = {}
        for split, ds in (("train", train), ("test", test)):
            av_ds = _av(ds)
            targets = torch.as_tensor(ds.targets)
            parts[split] = [
                av_ds.subset(torch.nonzero(torch.isin(targets, torch.tensor(ORDER[i:i + 2])))
                             .flatten().tolist())
                for i in range(0, N_CLASSES, 2)
            ]
        return benchmark_from_datasets(**parts)
    if name == "split_online_stream":
        bm = split_digits(flat=flat, n_experiences=5)
        online = split_online_stream(bm.train_stream, experience_size=128, shuffle=False)
        return _Online(online, bm.test_stream)
    if name == "task_labels":
        return split_digits(flat=flat, task_labels=True)
    raise KeyError(name)


class _Online:
    """A (train stream, test stream) pair for streams Avalanche builds lazily."""

    def __init__(self, train_stream, test_stream) -> None:
        self.train_stream, self.test_stream = train_stream, test_stream


# -- models ---------------------------------------------------------------------------
def feature_block(trainable: bool = False) -> nn.Module:
    torch.manual_seed(0)
    block = nn.Sequential(nn.Flatten(), nn.Linear(64, FEATURE_DIM), nn.ReLU())
    for p in block.parameters():
        p.requires_grad_(trainable)
    return block


class FeatureNet(nn.Module):
    """neve's model contract: ``classifier(features(x))``."""

    def __init__(self, head: nn.Module, trainable: bool = False) -> None:
        super().__init__()
        self.features = feature_block(trainable)
        self.classifier = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class MultiHeadNet(MultiTaskModule):
    """The feature block with Avalanche's ``MultiHeadClassifier`` (one head per task)."""

    def __init__(self, trainable: bool = False) -> None:
        super().__init__()
        self.features = feature_block(trainable)
        torch.manual_seed(1)
        self.classifier = MultiHeadClassifier(FEATURE_DIM, initial_out_features=2)

    def forward_single_task(self, x: torch.Tensor, task_label: int) -> torch.Tensor:
        return self.classifier(self.features(x), task_label)

    def forward(self, x, task_labels):  # MultiTaskModule routes per task
        return self.classifier(self.features(x), task_labels)


def make_model(kind: str = "linear", trainable: bool = False) -> nn.Module:
    """``"linear"``: a 10-way Linear head; ``"incremental"``: IncrementalClassifier;
    ``"multihead"``: MultiHeadClassifier."""
    if kind == "multihead":
        return MultiHeadNet(trainable)
    torch.manual_seed(1)
    if kind == "incremental":
        head = IncrementalClassifier(FEATURE_DIM, initial_out_features=2)
    else:
        head = nn.Linear(FEATURE_DIM, N_CLASSES)
    return FeatureNet(head, trainable)


# -- strategies -----------------------------------------------------------------------
def evaluator(loggers=None, *, all_metrics: bool = False, extra=()):
    metrics = [accuracy_metrics(stream=True, experience=True)]
    if all_metrics:
        metrics = [
            accuracy_metrics(minibatch=True, epoch=True, experience=True, stream=True),
            loss_metrics(minibatch=True, epoch=True, experience=True, stream=True),
            forgetting_metrics(experience=True, stream=True),
        ]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return av_plugins.EvaluationPlugin(*metrics, *extra, loggers=list(loggers or []))


def common(model: nn.Module, *, lr: float = 0.05, **overrides) -> dict:
    kwargs = dict(
        model=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9),
        criterion=nn.CrossEntropyLoss(),
        train_mb_size=32,
        train_epochs=1,
        eval_mb_size=256,
    )
    kwargs.update(overrides)
    if "evaluator" not in kwargs:
        kwargs["evaluator"] = evaluator()
    return kwargs


def make_strategy(name: str, model: nn.Module, *, plugins=(), **overrides):
    """Avalanche's strategy ``name`` on ``model`` (``FeatureNet``) with extra ``plugins``."""
    kw = common(model, **overrides)
    kw["plugins"] = list(plugins)
    if name == "iCaRL":
        kw.pop("model"), kw.pop("criterion")
        return av.ICaRL(feature_extractor=model.features, classifier=model.classifier,
                        memory_size=200, buffer_transform=None, fixed_memory=True, **kw)
    if name == "GenerativeReplay":
        from avalanche.models.generator import MlpVAE, VAE_loss
        from avalanche.training.supervised import VAETraining

        torch.manual_seed(2)
        vae = MlpVAE((1, 8, 8), nhid=2, n_classes=N_CLASSES)
        generator = VAETraining(model=vae, optimizer=torch.optim.Adam(vae.parameters(), 1e-3),
                                criterion=VAE_loss, train_mb_size=32, train_epochs=1,
                                eval_mb_size=256, evaluator=evaluator())
        return av.GenerativeReplay(generator_strategy=generator, **kw)
    extra = {
        "Naive": {},
        "Cumulative": {},
        "JointTraining": {},
        "Replay": {"mem_size": 100},
        "EWC": {"ewc_lambda": 1.0},
        "LwF": {"alpha": 1.0, "temperature": 2.0},
        "GDumb": {"mem_size": 200},
        "SI": {"si_lambda": 1.0},
    }[name]
    cls = {"SI": av.SynapticIntelligence}.get(name) or getattr(av, name)
    return cls(**kw, **extra)


def run(strategy, bm, *, eval_streams=None, per_experience_eval: bool = False):
    """Train on ``bm.train_stream`` (JointTraining: in one call); final test metrics.

    With ``per_experience_eval`` returns ``(final, rows)``: rows[t] are the metrics of
    ``strategy.eval(test_stream)`` after training experience t.
    """
    RNGManager.set_random_seeds(0)
    rows = []
    if isinstance(strategy, av.JointTraining):
        strategy.train(bm.train_stream)
    else:
        for exp in bm.train_stream:
            if eval_streams is None:
                strategy.train(exp)
            else:
                strategy.train(exp, eval_streams=eval_streams)
            if per_experience_eval:
                rows.append(strategy.eval(bm.test_stream))
    final = rows[-1] if rows else strategy.eval(bm.test_stream)
    return (final, rows) if per_experience_eval else final


# -- independent references -----------------------------------------------------------
def stacked(stream_or_datasets) -> tuple[torch.Tensor, torch.Tensor]:
    """All ``(x, y)`` of the experiences' datasets (eval transforms), stacked."""
    xs, ys = [], []
    for item in stream_or_datasets:
        ds = getattr(item, "dataset", item)
        ds = ds.eval() if hasattr(ds, "eval") else ds
        for i in range(len(ds)):
            x, y = ds[i][0], ds[i][1]
            xs.append(torch.as_tensor(x))
            ys.append(int(y))
    return torch.stack(xs), torch.tensor(ys)


def ridge_reference(phi_train: np.ndarray, y_train: np.ndarray, phi_test: np.ndarray,
                    gamma: float) -> np.ndarray:
    """Predictions of the joint ridge solution ``(X^T X + gamma I)^-1 X^T Y``, by lstsq."""
    n_classes = int(y_train.max()) + 1
    targets = np.eye(n_classes)[y_train]
    b = phi_train.shape[1]
    a = np.vstack([phi_train, np.sqrt(gamma) * np.eye(b)])
    t = np.vstack([targets, np.zeros((b, n_classes))])
    w = np.linalg.lstsq(a, t, rcond=None)[0]
    return (phi_test @ w).argmax(axis=1)


def class_means_by_hand(feats: torch.Tensor, y: torch.Tensor) -> dict[int, torch.Tensor]:
    return {int(c): feats[y == c].double().mean(0) for c in torch.unique(y)}


def accuracy_of(metrics: dict) -> float:
    for key, value in metrics.items():
        if key.startswith("Top1_Acc_Stream/eval_phase/test_stream"):
            return float(value)
    raise KeyError(f"no stream accuracy in {sorted(metrics)}")
