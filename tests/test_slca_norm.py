"""SlowLearnerPlugin's normalisation handling, fresh optimizer state and per-task head init."""

import copy

import pytest
import torch
from avalanche.benchmarks import nc_benchmark
from avalanche.core import SupervisedPlugin
from avalanche.evaluation.metrics import accuracy_metrics
from avalanche.training.plugins import EvaluationPlugin
from avalanche.training.supervised import Naive
from bad_input import assert_refused

from neve.benchmarks import digits
from neve.models import PretrainedClassifier
from neve.plugins import ClassifierAlignmentPlugin, SlowLearnerPlugin
from neve.strategies import SLCA


def bn_dropout_backbone(feature_dim: int = 12) -> torch.nn.Module:
    """A tiny trainable backbone with batch norm and dropout (both differ in train mode)."""
    return torch.nn.Sequential(
        torch.nn.Flatten(),
        torch.nn.Linear(64, feature_dim),
        torch.nn.BatchNorm1d(feature_dim),
        torch.nn.ReLU(),
        torch.nn.Dropout(0.5),
    )


@pytest.fixture(scope="module")
def split_digits():
    train, test = digits(seed=0)
    return nc_benchmark(train, test, n_experiences=5, task_labels=False, seed=0)


def silent():
    return EvaluationPlugin(loggers=[])


class ModeProbe(SupervisedPlugin):
    """Records, per training iteration, the modes and whether features are deterministic."""

    def __init__(self):
        super().__init__()
        self.backbone_training, self.head_training, self.deterministic = [], [], []

    def before_training_iteration(self, strategy, **kwargs):
        model = strategy.model
        self.backbone_training.append(any(m.training for m in model.features.modules()))
        self.head_training.append(all(m.training for m in model.classifier.modules()))
        with torch.no_grad():
            a, b = model.features(strategy.mb_x), model.features(strategy.mb_x)
        self.deterministic.append(bool(torch.equal(a, b)))


def test_eval_mode_keeps_running_statistics_and_turns_dropout_off(split_digits):
    torch.manual_seed(0)
    model = PretrainedClassifier(bn_dropout_backbone(), num_classes=2, feature_dim=12)
    bn = model.features[2]
    before = {k: v.clone() for k, v in bn.state_dict().items()}
    head_before = model.classifier.classifier.weight.detach().clone()
    probe = ModeProbe()
    strategy = Naive(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.05),
                     train_mb_size=32, train_epochs=2, evaluator=silent(), eval_every=1,
                     plugins=[SlowLearnerPlugin(0.1, norm_stats="eval"), probe])
    strategy.train(split_digits.train_stream[0], eval_streams=[split_digits.test_stream[:1]])
    # running statistics untouched, but the affine weights (the representation) learned
    for key in ("running_mean", "running_var", "num_batches_tracked"):
        assert torch.equal(bn.state_dict()[key], before[key]), key
    assert not torch.equal(bn.weight.detach(), before["weight"])
    rows = sorted(split_digits.train_stream[0].classes_in_this_experience)
    assert not torch.equal(model.classifier.classifier.weight.detach()[: head_before.shape[0]],
                           head_before) or model.classifier.classifier.weight.shape[0] > 2
    assert model.classifier.classifier.weight.detach()[rows].abs().sum() > 0
    # every iteration (also after the periodic evaluation): backbone in eval, head in train
    assert len(probe.backbone_training) > 4
    assert not any(probe.backbone_training)
    assert all(probe.head_training)
    assert all(probe.deterministic)
    # modes restored after the experience
    assert all(m.training for m in model.modules())


def test_train_mode_is_stochastic_and_updates_running_statistics(split_digits):
    """The contrast of the test above: in "train" mode the same probe sees dropout and BN."""
    torch.manual_seed(0)
    model = PretrainedClassifier(bn_dropout_backbone(), num_classes=2, feature_dim=12)
    before = model.features[2].running_mean.clone()
    probe = ModeProbe()
    Naive(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.05),
          train_mb_size=32, evaluator=silent(),
          plugins=[SlowLearnerPlugin(0.1, norm_stats="train"), probe]).train(
        split_digits.train_stream[0])
    assert all(probe.backbone_training) and not any(probe.deterministic)
    assert not torch.equal(model.features[2].running_mean, before)


def test_eval_mode_head_equals_a_head_trained_on_fixed_eval_features(split_digits):
    """With the backbone's lr at 0, "eval" mode trains the head exactly as a hand-made
    setup that freezes the backbone's weights and puts it in eval mode every iteration."""

    class FrozenByHand(SupervisedPlugin):
        def before_training_iteration(self, strategy, **kwargs):
            strategy.model.features.eval()

    def run(plugins, freeze):
        torch.manual_seed(0)
        model = PretrainedClassifier(bn_dropout_backbone(), num_classes=2, feature_dim=12)
        if freeze:
            for p in model.features.parameters():
                p.requires_grad_(False)
        strategy = Naive(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.05),
                         train_mb_size=32, train_epochs=2, evaluator=silent(), plugins=plugins)
        for exp in split_digits.train_stream[:2]:
            strategy.train(exp)
        return model

    ours = run([SlowLearnerPlugin(0.0, norm_stats="eval")], freeze=False)
    by_hand = run([FrozenByHand()], freeze=True)
    torch.testing.assert_close(ours.classifier.state_dict(), by_hand.classifier.state_dict())
    torch.testing.assert_close(ours.features.state_dict(), by_hand.features.state_dict())


def test_eval_mode_restores_a_backbone_that_was_in_eval_mode_before(split_digits):
    torch.manual_seed(0)
    model = PretrainedClassifier(bn_dropout_backbone(), num_classes=2, feature_dim=12)

    class EvalDropout(SupervisedPlugin):  # a user's choice, made after Avalanche's model.train()
        def before_training(self, strategy, **kwargs):
            strategy.model.features[4].eval()

    plugin = SlowLearnerPlugin(0.1, norm_stats="eval")
    Naive(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.05),
          train_mb_size=32, evaluator=silent(), plugins=[EvalDropout(), plugin]).train(
        split_digits.train_stream[0])
    assert not model.features[4].training
    assert model.features[2].training and model.classifier.training


# ------------------------------------------------------------------ fresh optimizer state


def test_fresh_optimizer_state_equals_a_new_sgd_per_experience(split_digits):
    def head_weights(reset):
        torch.manual_seed(0)
        model = PretrainedClassifier(bn_dropout_backbone(), num_classes=2, feature_dim=12)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9,
                                    weight_decay=5e-4)
        strategy = Naive(model=model, optimizer=optimizer, train_mb_size=32, evaluator=silent(),
                         plugins=[SlowLearnerPlugin(0.1, norm_stats="eval",
                                                    reset_optimizer=reset)])
        torch.manual_seed(1)
        strategy.train(split_digits.train_stream[0])
        return model, strategy

    model, strategy = head_weights(reset=True)
    twin = copy.deepcopy(model)
    torch.manual_seed(2)
    strategy.train(split_digits.train_stream[1])
    # by hand: a new strategy with a new SGD on a copy of the model after experience 0
    new = Naive(model=twin, optimizer=torch.optim.SGD(twin.parameters(), lr=0.05, momentum=0.9,
                                                      weight_decay=5e-4),
                train_mb_size=32, evaluator=silent(),
                plugins=[SlowLearnerPlugin(0.1, norm_stats="eval")])
    torch.manual_seed(2)
    new.train(split_digits.train_stream[1])
    torch.testing.assert_close(model.state_dict(), twin.state_dict())
    # without the reset, momentum carries over and the weights differ
    kept, kept_strategy = head_weights(reset=False)
    torch.manual_seed(2)
    kept_strategy.train(split_digits.train_stream[1])
    assert not torch.allclose(kept.classifier.classifier.weight, model.classifier.classifier.weight)


# ------------------------------------------------------------------ per-task head init


def test_head_init_draws_new_class_rows_from_trunc_normal(split_digits):
    torch.manual_seed(0)
    model = PretrainedClassifier(bn_dropout_backbone(), num_classes=2, feature_dim=12)
    seen = {}

    class Snapshot(SupervisedPlugin):
        def before_training_iteration(self, strategy, **kwargs):
            if strategy.clock.train_exp_iterations == 0:
                head = strategy.model.classifier.classifier
                seen[strategy.clock.train_exp_counter] = copy.deepcopy(head.state_dict())

    plugin = SlowLearnerPlugin(0.1, norm_stats="eval", head_init="trunc_normal", seed=3)
    strategy = Naive(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.05),
                     train_mb_size=32, evaluator=silent(), plugins=[plugin, Snapshot()])
    previous = None
    for k, exp in enumerate(split_digits.train_stream[:2]):
        strategy.train(exp)
        classes = sorted(exp.classes_in_this_experience)
        expected = torch.empty(len(classes), 12)
        torch.nn.init.trunc_normal_(expected, std=0.02,
                                    generator=torch.Generator().manual_seed(3 + k))
        start = seen[k]
        torch.testing.assert_close(start["weight"][classes], expected)
        assert torch.equal(start["bias"][classes], torch.zeros(len(classes)))
        if previous is not None:  # rows of earlier classes are the trained ones
            old = sorted(split_digits.train_stream[0].classes_in_this_experience)
            assert torch.equal(start["weight"][old], previous["weight"][old])
        previous = copy.deepcopy(model.classifier.classifier.state_dict())
    assert plugin.state_dict()["initialised_classes"] == sorted(
        set(split_digits.train_stream[0].classes_in_this_experience)
        | set(split_digits.train_stream[1].classes_in_this_experience))


def test_slca_options_survive_state_dict(split_digits):
    plugin = SlowLearnerPlugin(0.01, norm_stats="eval", head_init="trunc_normal",
                               reset_optimizer=True, seed=5)
    plugin.initialised_classes = {1, 4}
    other = SlowLearnerPlugin()
    other.load_state_dict(plugin.state_dict())
    assert other.state_dict() == plugin.state_dict()


@pytest.mark.parametrize("name, value", [
    ("norm_stats", "evaluation"), ("head_init", "kaiming"), ("reset_optimizer", 1),
    ("seed", -1), ("head_init_std", 0.0),
])
def test_slow_learner_refuses_bad_new_options(name, value):
    assert_refused(lambda: SlowLearnerPlugin(**{name: value}), name)


def test_load_state_dict_refuses_bad_norm_stats_unchanged():
    plugin = SlowLearnerPlugin(norm_stats="eval")
    state = dict(plugin.state_dict(), norm_stats="fast")
    assert_refused(lambda: plugin.load_state_dict(state), "norm_stats", state=plugin.state_dict)


@pytest.mark.parametrize("norm_stats", ["eval", "eval_slow"])
def test_slca_in_eval_mode_first_experience_is_learned(split_digits, norm_stats):
    torch.manual_seed(0)
    model = PretrainedClassifier(bn_dropout_backbone(), num_classes=2, feature_dim=12)
    strategy = SLCA(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.05,
                                                           momentum=0.9),
                    train_mb_size=32, train_epochs=3,
                    evaluator=EvaluationPlugin(accuracy_metrics(stream=True), loggers=[]),
                    slow_learner=SlowLearnerPlugin(1.0, norm_stats=norm_stats),
                    alignment=ClassifierAlignmentPlugin(epochs=0))
    strategy.train(split_digits.train_stream[0])
    acc = strategy.eval(split_digits.test_stream[:1])
    assert acc["Top1_Acc_Stream/eval_phase/test_stream/Task000"] > 0.9
