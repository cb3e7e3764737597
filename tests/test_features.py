"""Shared model helpers: the one frozen-feature pass (modes restored, one RNG draw, no silent
truncation) and the model-contract lookup."""

import pytest
import torch

from neve.benchmarks import LabelledTensorDataset
from neve.models import extract_features, iter_features


class _Fractional(LabelledTensorDataset):
    def __getitem__(self, i):
        x, y = super().__getitem__(i)
        return x, float(y) + 0.5


def test_feature_pass_refuses_fractional_targets_instead_of_truncating():
    data = _Fractional(torch.zeros(4, 3), torch.arange(4))
    with pytest.raises(ValueError, match="targets"):
        extract_features(torch.nn.Identity(), data, preprocess=False)


def test_feature_pass_restores_each_submodule_mode_and_uses_eval_mode():
    net = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Dropout(0.9), torch.nn.BatchNorm1d(3))
    net.train()
    net[2].eval()  # a mixed state must come back as it was
    data = LabelledTensorDataset(torch.randn(8, 3), torch.arange(8) % 2)
    a = torch.cat([f for f, _ in iter_features(net, data, batch_size=3)])
    b = torch.cat([f for f, _ in iter_features(net, data, batch_size=5)])
    assert torch.allclose(a, b, atol=1e-6)  # eval mode: no dropout, running statistics
    assert [m.training for m in net] == [True, True, False]


def test_feature_pass_draws_one_loader_seed_from_the_global_rng():
    data = LabelledTensorDataset(torch.randn(8, 3), torch.arange(8) % 2)
    torch.manual_seed(0)
    list(iter_features(torch.nn.Identity(), data, batch_size=4))
    after_pass = torch.rand(1)
    torch.manual_seed(0)
    iter(torch.utils.data.DataLoader(data, batch_size=4))  # one plain loader iterator
    assert torch.equal(after_pass, torch.rand(1))


def test_model_part_looks_inside_a_data_parallel_wrapper():
    from neve.models import PretrainedClassifier, model_part

    model = PretrainedClassifier(torch.nn.Linear(3, 4), num_classes=2, feature_dim=4)
    wrapped = torch.nn.DataParallel(model)
    assert model_part(wrapped, "classifier", "head") is model.classifier
    with pytest.raises(ValueError, match="'head'"):
        model_part(wrapped, "head", "head")
