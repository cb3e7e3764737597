"""SLCA composes with neve's AnalyticHeadPlugin (the analytic head answers evaluation)."""

import pytest
from avalanche.benchmarks import nc_benchmark
from test_slca_composition import (
    SCALE,
    check_slca_state,
    common,
    run,
    tiny_model,
)

from neve.benchmarks import digits
from neve.plugins import ClassifierAlignmentPlugin, SlowLearnerPlugin
from neve.plugins.analytic import AnalyticHeadPlugin
from neve.strategies import SLCA


@pytest.fixture(scope="module")
def split_digits():
    train, test = digits(seed=0)
    return nc_benchmark(train, test, n_experiences=5, task_labels=False, seed=0)


def test_with_analytic_head_plugin(split_digits):
    analytic = AnalyticHeadPlugin(buffer_size=256, gamma=1.0)
    strategy = SLCA(
        plugins=[analytic],
        slow_learner=SlowLearnerPlugin(SCALE),
        alignment=ClassifierAlignmentPlugin(samples_per_class=32, epochs=2, batch_size=32),
        **common(tiny_model()),
    )
    acc = run(strategy, split_digits)
    check_slca_state(strategy, split_digits, strategy.alignment)
    assert analytic.head is not None and analytic.head.num_classes == 10
    assert acc > 0.5
