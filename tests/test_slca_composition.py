"""SLCA's plugins compose with Avalanche's Replay, EWC and LwF (test_slca_analytic.py: ACIL)."""

import pytest
import torch
from avalanche.training.determinism.rng_manager import RNGManager
from avalanche.training.plugins import LwFPlugin
from avalanche.training.supervised import EWC, Naive, Replay
from conftest import silent_evaluator, tiny_model

from neve.plugins import ClassifierAlignmentPlugin, SlowLearnerPlugin
from neve.strategies import SLCA

STREAM = "Top1_Acc_Stream/eval_phase/test_stream/Task000"
FEATURE_DIM = 24  # of tiny_model


def common(model):
    return dict(
        model=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9),
        criterion=torch.nn.CrossEntropyLoss(),
        train_mb_size=32,
        train_epochs=1,
        eval_mb_size=200,
        evaluator=silent_evaluator(stream=True),
    )


SCALE = 0.01


def slca_plugins():
    return [
        SlowLearnerPlugin(backbone_lr_scale=SCALE),
        ClassifierAlignmentPlugin(samples_per_class=32, epochs=2, batch_size=32),
    ]


def run(strategy, bm):
    RNGManager.set_random_seeds(0)
    for exp in bm.train_stream:
        strategy.train(exp)
    return strategy.eval(bm.test_stream)[STREAM]


def check_slca_state(strategy, bm, alignment):
    """Groups carry two lrs; statistics come from each experience's own data only."""
    model = strategy.model
    head_ids = {id(p) for p in model.classifier.parameters()}
    for g in strategy.optimizer.param_groups:
        ids = {id(p) for p in g["params"]}
        if ids & head_ids:
            assert ids == head_ids and g["lr"] == pytest.approx(0.05)
        elif ids:
            assert g["lr"] == pytest.approx(0.05 * SCALE)
    for exp in bm.train_stream:
        targets = torch.as_tensor(exp.dataset.targets)
        for c in exp.classes_in_this_experience:
            assert alignment.stats.counts[c] == int((targets == c).sum())
    assert alignment.stats.classes == list(range(10))


def test_naive_baseline_forgets(split_digits):
    acc = run(Naive(**common(tiny_model(FEATURE_DIM))), split_digits)
    assert acc < 0.3


def test_with_replay_strategy(split_digits):
    plugins = slca_plugins()
    strategy = Replay(mem_size=100, plugins=plugins, **common(tiny_model(FEATURE_DIM)))
    acc = run(strategy, split_digits)
    check_slca_state(strategy, split_digits, plugins[1])
    assert acc > 0.4  # Naive stays near 0.2 (test_naive_baseline_forgets)


def test_with_ewc_strategy(split_digits):
    plugins = slca_plugins()
    strategy = EWC(ewc_lambda=1.0, plugins=plugins, **common(tiny_model(FEATURE_DIM)))
    acc = run(strategy, split_digits)
    check_slca_state(strategy, split_digits, plugins[1])
    assert 0.0 < acc <= 1.0
    assert len(plugins[1].alignment_losses) == 4  # aligned after experiences 1..4


def test_with_lwf_plugin_teacher_is_the_unaligned_model(split_digits):
    lwf = LwFPlugin(alpha=1.0, temperature=2.0)
    strategy = SLCA(
        plugins=[lwf],
        slow_learner=SlowLearnerPlugin(SCALE),
        alignment=ClassifierAlignmentPlugin(samples_per_class=32, epochs=2, batch_size=32),
        **common(tiny_model(FEATURE_DIM)),
    )
    acc = run(strategy, split_digits)
    check_slca_state(strategy, split_digits, strategy.alignment)
    teacher = lwf.lwf.prev_model.classifier.state_dict()
    unaligned = strategy.alignment.unaligned_head
    assert unaligned is not None
    for k, v in unaligned.items():
        assert torch.equal(teacher[k], v), k
    aligned = strategy.model.classifier.state_dict()["classifier.weight"]
    assert not torch.equal(aligned, unaligned["classifier.weight"])
    assert 0.0 < acc <= 1.0
