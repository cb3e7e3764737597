"""Every neve plugin declares ``supports_distributed``, Avalanche's check passes, and what
cannot be right under several processes is refused (#14): the episodic tuning
baselines, and the analytic head over features trained without DDP.

Avalanche's ``BasePlugin.__init_subclass__`` sets ``supports_distributed = False``
on every subclass that does not pass it again, so a subclass of a supporting
plugin silently loses the flag; its templates then warn under torch.distributed.
"""

import inspect

import pytest
import torch
from avalanche.benchmarks.scenarios.dataset_scenario import benchmark_from_datasets
from avalanche.benchmarks.scenarios.supervised import with_classes_timeline
from avalanche.benchmarks.utils.classification_dataset import (
    _make_taskaware_tensor_classification_dataset as tensor_dataset,
)
from avalanche.core import BasePlugin
from avalanche.evaluation import PluginMetric
from avalanche.logging import BaseLogger
from avalanche.training.plugins import EvaluationPlugin
from avalanche.training.supervised import Naive

import neve.plugins
import neve.plugins.analytic as analytic
from neve.models import PretrainedClassifier
from neve.plugins import (
    AnalyticHeadPlugin,
    CurriculumEffectiveness,
    DDPPlugin,
    WholeEvaluationPlugin,
)
from neve.strategies import SLCA, AnalyticCIL, NearestPrototype, pretrain_tune
from neve.strategies.episodic import tune_network

PLUGINS = [obj for _, obj in inspect.getmembers(neve.plugins, inspect.isclass)
           if issubclass(obj, (BasePlugin, PluginMetric, BaseLogger))]


def test_the_plugin_list_holds_every_kind():
    names = {c.__name__ for c in PLUGINS}
    assert {"SlowLearnerPlugin", "CurriculumEffectiveness", "PhaseProgressLogger",
            "ExactShardsPlugin"} <= names
    assert {"SeenClassesEvaluation", "AnytimeAccuracy", "LastAccuracy"} <= names
    assert len(names) == 12


@pytest.mark.parametrize("plugin", PLUGINS, ids=lambda c: c.__name__)
def test_every_neve_plugin_declares_distributed_support(plugin):
    assert plugin.supports_distributed is True


def _strategies():
    backbone = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    evaluator = EvaluationPlugin(CurriculumEffectiveness(), loggers=[])
    model = PretrainedClassifier(backbone, num_classes=2, feature_dim=3)
    yield SLCA(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
               evaluator=evaluator, plugins=[WholeEvaluationPlugin()])
    yield AnalyticCIL(backbone=backbone, feature_dim=3, buffer_size=8,
                      evaluator=EvaluationPlugin(CurriculumEffectiveness(), loggers=[]))
    yield NearestPrototype(num_classes=2, feature_dim=4,
                           evaluator=EvaluationPlugin(CurriculumEffectiveness(), loggers=[]))


def test_avalanche_finds_every_plugin_of_neve_strategies_distributed(monkeypatch):
    strategies = list(_strategies())
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    for strategy in strategies:
        unsupported = [type(p).__name__ for p in strategy.plugins
                       if not getattr(p, "supports_distributed", False)]
        assert unsupported == [], type(strategy).__name__
        assert strategy._check_distributed_training_compatibility() is True


@pytest.mark.parametrize("build", [
    lambda: pretrain_tune(3, feature_dim=4),
    lambda: tune_network(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 4)), 3,
                         feature_dim=4),
], ids=["pretrain_tune", "tune_network"])
def test_episodic_tuning_refuses_several_processes(monkeypatch, build):
    assert build() is not None  # one process: built
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda: 2)
    with pytest.raises(RuntimeError, match="shard of every support set"):
        build()


def _naive_with_analytic_head(frozen: bool, ddp: bool):
    model = PretrainedClassifier(torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU()),
                                 num_classes=4, feature_dim=3)
    if frozen:
        model.features.requires_grad_(False)
    plugins = [AnalyticHeadPlugin(8)] + ([DDPPlugin()] if ddp else [])
    return Naive(model=model, optimizer=torch.optim.SGD(
        [p for p in model.parameters() if p.requires_grad], lr=0.1),
        train_mb_size=10, evaluator=EvaluationPlugin(loggers=[]), plugins=plugins)


@pytest.mark.parametrize(("frozen", "ddp", "refused"), [
    (False, False, True), (True, False, False), (False, True, False)])
def test_analytic_head_refuses_undistributed_trainable_features(monkeypatch, frozen, ddp,
                                                               refused):
    data = tensor_dataset(torch.randn(20, 4), torch.arange(20) % 4)
    stream = with_classes_timeline(benchmark_from_datasets(train=[data], test=[data]))
    strategy = _naive_with_analytic_head(frozen, ddp)
    before = [p.detach().clone() for p in strategy.model.parameters()]
    # the check, as under several processes; the rest of the run stays single-process
    monkeypatch.setattr(analytic, "is_distributed", lambda: True)
    if refused:
        with pytest.raises(RuntimeError, match="DDPPlugin"):
            strategy.train(stream.train_stream[0])
        assert all(torch.equal(b, p) for b, p in zip(before, strategy.model.parameters(),
                                                     strict=True))  # nothing trained
    else:
        strategy.train(stream.train_stream[0])
        assert strategy.plugins[0].head is not None
