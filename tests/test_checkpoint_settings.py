"""A checkpoint is refused when it does not fit what each component declares, or a field is bad.

Settings that live inside state (NearestPrototype's class count and feature size,
the alignment's covariance kind) are declared by their components; every field of
a file is checked before anything changes.
"""

import warnings

import pytest
import torch
from avalanche.benchmarks import nc_benchmark
from avalanche.training.supervised import Naive

from neve.benchmarks import LabelledTensorDataset, digits
from neve.models import PretrainedClassifier
from neve.plugins import (
    CheckpointError,
    ClassifierAlignmentPlugin,
    SlowLearnerPlugin,
    maybe_load_checkpoint,
    save_checkpoint,
)
from neve.plugins.checkpoint_file import read_checkpoint_file, write_checkpoint_file
from neve.strategies import SLCA, NearestPrototype


def features_stream(classes: int, dim: int):
    g = torch.Generator().manual_seed(0)
    y = torch.arange(classes).repeat_interleave(6)
    x = torch.randn(len(y), dim, generator=g) + y[:, None]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return nc_benchmark(LabelledTensorDataset(x, y), LabelledTensorDataset(x, y),
                            n_experiences=2, task_labels=False, seed=0)


def state_of(strategy):
    return {k: v.clone() for k, v in strategy.state_dict().items()}


def test_nearest_prototype_refuses_a_file_of_another_class_count_and_size(tmp_path):
    source = NearestPrototype(num_classes=10, feature_dim=64)
    source.train(features_stream(10, 64).train_stream[0])
    save_checkpoint(source, tmp_path / "np.ckpt")
    target = NearestPrototype(num_classes=20, feature_dim=32)
    before = state_of(target)
    with pytest.raises(CheckpointError) as info:
        maybe_load_checkpoint(target, tmp_path / "np.ckpt")
    assert "num_classes" in str(info.value) and "feature_dim" in str(info.value)
    assert all(torch.equal(before[k], v) for k, v in state_of(target).items())
    assert target.class_sums.shape == (20, 32)


def slca(covariance: str):
    torch.manual_seed(0)
    backbone = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 8), torch.nn.ReLU())
    model = PretrainedClassifier(backbone, num_classes=2, feature_dim=8)
    return SLCA(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.05),
                train_mb_size=32, eval_mb_size=256, evaluator=None,
                slow_learner=SlowLearnerPlugin(0.1),
                alignment=ClassifierAlignmentPlugin(samples_per_class=8, epochs=1,
                                                    covariance=covariance))


@pytest.mark.parametrize("saved", ["diagonal", "shared"])
def test_slca_refuses_a_file_of_another_covariance_kind(tmp_path, saved):
    train, test = digits(seed=0)
    bm = nc_benchmark(train, test, n_experiences=5, task_labels=False, seed=0)
    source = slca(saved)
    source.train(bm.train_stream[0])
    save_checkpoint(source, tmp_path / "s.ckpt")
    target = slca("full")
    with pytest.raises(CheckpointError, match="covariance"):
        maybe_load_checkpoint(target, tmp_path / "s.ckpt")
    assert target.alignment.stats.covariance == "full" and not target.alignment.stats.classes


def naive():
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    return Naive(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                 criterion=torch.nn.CrossEntropyLoss(), evaluator=None)


@pytest.mark.parametrize("value", [-3, 10**6, "2", 2.0, None, True])
def test_a_bad_next_experience_is_refused_before_anything_changes(tmp_path, value):
    save_checkpoint(naive(), tmp_path / "ok.ckpt")
    payload = read_checkpoint_file(tmp_path / "ok.ckpt")
    payload["next_experience"] = value
    write_checkpoint_file(tmp_path / "bad.ckpt", payload)
    target = naive()
    with torch.no_grad():
        target.model.weight.fill_(0.5)
    with pytest.raises(CheckpointError, match="next_experience"):
        maybe_load_checkpoint(target, tmp_path / "bad.ckpt")
    assert bool((target.model.weight == 0.5).all())


@pytest.mark.parametrize("field, value", [
    ("settings", []), ("model", None), ("plugins", [1, 2]), ("rng", "x"), ("strategy", 3)])
def test_a_field_of_the_wrong_kind_is_refused_before_anything_changes(tmp_path, field, value):
    save_checkpoint(naive(), tmp_path / "ok.ckpt")
    payload = read_checkpoint_file(tmp_path / "ok.ckpt")
    payload[field] = value
    write_checkpoint_file(tmp_path / "bad.ckpt", payload)
    target = naive()
    before = target.model.weight.clone()
    with pytest.raises(CheckpointError, match="damaged|field"):
        maybe_load_checkpoint(target, tmp_path / "bad.ckpt")
    assert torch.equal(target.model.weight, before)
