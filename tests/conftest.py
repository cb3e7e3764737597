import os

import pytest
import torch


@pytest.fixture(scope="session", autouse=True)
def neve_cache(tmp_path_factory):
    """Tests keep neve's data and feature caches in a temporary folder, not in the home folder."""
    previous = os.environ.get("NEVE_CACHE")
    os.environ["NEVE_CACHE"] = str(tmp_path_factory.mktemp("neve-cache"))
    yield os.environ["NEVE_CACHE"]
    if previous is None:
        os.environ.pop("NEVE_CACHE", None)
    else:
        os.environ["NEVE_CACHE"] = previous


@pytest.fixture(scope="session")
def backbone():
    from neve.models import pretrained_backbone

    torch.manual_seed(0)
    return pretrained_backbone("efficientnet-lite0", input_size=64)


@pytest.fixture(scope="session")
def fmnist():
    from neve.benchmarks import fashion_mnist

    return fashion_mnist()


@pytest.fixture(scope="session")
def digits_data():
    from neve.benchmarks import digits

    return digits()


# -- shared builders: plain functions (``from conftest import ...``), so that helpers that
# build strategies at call time use them too; data as a fixture
def silent_evaluator(*metrics, **accuracy):
    """``EvaluationPlugin(*metrics, loggers=[])`` without Avalanche's "No loggers" warning.

    Keyword flags add ``accuracy_metrics(**accuracy)`` first, e.g.
    ``silent_evaluator(stream=True)``; no argument: no metric at all.
    """
    import warnings

    from avalanche.evaluation.metrics import accuracy_metrics
    from avalanche.training.plugins import EvaluationPlugin

    if accuracy:
        metrics = (accuracy_metrics(**accuracy), *metrics)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return EvaluationPlugin(*metrics, loggers=[])


def tiny_model(dim: int = 16):
    """A small ``PretrainedClassifier``: Flatten, Linear(64, dim), ReLU and a 2-class head,
    built from ``torch.manual_seed(0)`` (the same weights on every call)."""
    from neve.models import PretrainedClassifier

    torch.manual_seed(0)
    backbone = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, dim), torch.nn.ReLU())
    return PretrainedClassifier(backbone, num_classes=2, feature_dim=dim)


@pytest.fixture(scope="module")
def split_digits():
    """scikit-learn digits (``digits(seed=0)``) in 5 experiences of 2 classes (seed 0)."""
    from avalanche.benchmarks import nc_benchmark

    from neve.benchmarks import digits

    train, test = digits(seed=0)
    return nc_benchmark(train, test, n_experiences=5, task_labels=False, seed=0)

