"""SLCA composes with neve's AnalyticHeadPlugin (the analytic head answers evaluation)."""

from conftest import tiny_model
from test_slca_composition import FEATURE_DIM, SCALE, check_slca_state, common, run

from neve.plugins import ClassifierAlignmentPlugin, SlowLearnerPlugin
from neve.plugins.analytic import AnalyticHeadPlugin
from neve.strategies import SLCA


def test_with_analytic_head_plugin(split_digits):
    analytic = AnalyticHeadPlugin(buffer_size=256, gamma=1.0)
    strategy = SLCA(
        plugins=[analytic],
        slow_learner=SlowLearnerPlugin(SCALE),
        alignment=ClassifierAlignmentPlugin(samples_per_class=32, epochs=2, batch_size=32),
        **common(tiny_model(FEATURE_DIM)),
    )
    acc = run(strategy, split_digits)
    check_slca_state(strategy, split_digits, strategy.alignment)
    assert analytic.head is not None and analytic.head.num_classes == 10
    assert acc > 0.5
