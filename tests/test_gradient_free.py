"""The gradient-free rule refuses gradient plugins by name and accepts metrics and loggers."""

import pytest
from avalanche.evaluation.metrics import ExperienceForgetting, StreamAccuracy
from avalanche.logging import TextLogger
from avalanche.training.plugins import EWCPlugin, LwFPlugin, ReplayPlugin

from neve.plugins import CurriculumEffectiveness, PhaseProgressLogger
from neve.strategies.closed_form import check_gradient_free


@pytest.mark.parametrize(
    "plugin",
    [StreamAccuracy(), ExperienceForgetting(), CurriculumEffectiveness(), TextLogger(),
     PhaseProgressLogger(), ReplayPlugin(10)],
    ids=lambda p: type(p).__name__,
)
def test_metrics_loggers_and_data_plugins_are_accepted(plugin):
    check_gradient_free([plugin], "NearestPrototype")


@pytest.mark.parametrize("plugin", [EWCPlugin(1.0), LwFPlugin()], ids=lambda p: type(p).__name__)
def test_gradient_plugins_are_refused_by_name(plugin):
    with pytest.raises(ValueError, match=type(plugin).__name__):
        check_gradient_free([plugin], "NearestPrototype")
