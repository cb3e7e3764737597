"""Every neve plugin declares ``supports_distributed``, Avalanche's check passes, and the
episodic tuning baselines refuse several processes (#14).

Avalanche's ``BasePlugin.__init_subclass__`` sets ``supports_distributed = False``
on every subclass that does not pass it again, so a subclass of a supporting
plugin silently loses the flag; its templates then warn under torch.distributed.
"""

import inspect

import pytest
import torch
from avalanche.core import BasePlugin
from avalanche.evaluation import PluginMetric
from avalanche.logging import BaseLogger
from avalanche.training.plugins import EvaluationPlugin

import neve.plugins
from neve.models import PretrainedClassifier
from neve.plugins import CurriculumEffectiveness, WholeEvaluationPlugin
from neve.strategies import SLCA, AnalyticCIL, NearestPrototype, pretrain_tune
from neve.strategies.episodic import tune_network

PLUGINS = [obj for _, obj in inspect.getmembers(neve.plugins, inspect.isclass)
           if issubclass(obj, (BasePlugin, PluginMetric, BaseLogger))]


def test_the_plugin_list_holds_every_kind():
    names = {c.__name__ for c in PLUGINS}
    assert {"SlowLearnerPlugin", "CurriculumEffectiveness", "PhaseProgressLogger",
            "ExactShardsPlugin"} <= names
    assert len(names) == 9


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
