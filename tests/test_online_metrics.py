"""A_auc / A_last on the classes seen so far (Si-Blurry's evaluation) against hand computations."""

import warnings

import pytest
import torch
from avalanche.core import SupervisedPlugin
from avalanche.training.plugins import EvaluationPlugin
from avalanche.training.supervised import Naive
from bad_input import assert_refused
from torch import nn

from neve.benchmarks import LabelledTensorDataset, si_blurry_benchmark
from neve.plugins import (
    AnytimeAccuracy,
    LastAccuracy,
    SeenClassesEvaluation,
    maybe_load_checkpoint,
    save_checkpoint,
    seen_classes_stream,
)
from neve.plugins.online_metrics import (
    anytime_accuracy,
    evaluation_due,
    seen_class_predictions,
)
from neve.strategies import AnalyticCIL


def test_evaluation_points_follow_the_authors_rule():
    points, next_point, seen = [], 100, 0
    for _ in range(8):  # batches of 64, a point every 100 samples
        seen += 64
        due, next_point = evaluation_due(seen, next_point, 100)
        if due:
            points.append(seen)
    assert points == [128, 256, 320, 448, 512]  # > 100, > 200, > 300, > 400, > 500
    assert evaluation_due(100, 100, 100) == (False, 100)  # strictly more
    assert evaluation_due(450, 100, 100) == (True, 200)  # one step at a time


def test_anytime_accuracy_is_the_mean_of_the_points():
    assert anytime_accuracy([0.2, 0.5, 0.8]) == pytest.approx(0.5)
    assert anytime_accuracy([1.0]) == 1.0
    # points every k samples: the mean is the right Riemann sum of the curve over its length
    acc = [0.1, 0.4, 0.6, 0.9]
    assert anytime_accuracy(acc) == pytest.approx(sum(a * 50 for a in acc) / 200)


def test_predictions_are_restricted_to_the_seen_classes():
    logits = torch.tensor([[5.0, 1.0, 2.0, 9.0], [0.0, 3.0, 1.0, 0.5], [7.0, -1.0, -2.0, 0.0]])
    assert seen_class_predictions(logits, [1, 2]).tolist() == [2, 1, 1]
    assert seen_class_predictions(logits, [0, 3, 11]).tolist() == [3, 3, 0]


def blobs(n_classes=6, per_class=40, seed=0):
    gen = torch.Generator().manual_seed(seed)
    centres = 3 * torch.randn(n_classes, 8, generator=torch.Generator().manual_seed(99))
    y = torch.arange(n_classes).repeat_interleave(per_class)
    y = y[torch.randperm(len(y), generator=gen)]
    return LabelledTensorDataset(centres[y] + torch.randn(len(y), 8, generator=gen), y)


class HandAccuracy(SupervisedPlugin):
    """Test-side plugin: after each periodic evaluation, the same accuracy computed by hand."""

    def __init__(self, test, metric, every):
        super().__init__()
        self.test, self.metric, self.every = test, metric, every
        self.seen, self.samples, self.next_point, self.accuracies = set(), 0, every, []

    def accuracy(self, model):
        keep = torch.isin(self.test.targets, torch.tensor(sorted(self.seen)))
        model.eval()
        with torch.no_grad():
            logits = model(self.test.data[keep])
        mask = torch.full((logits.shape[1],), float("-inf"))
        mask[sorted(self.seen)] = 0.0
        pred = (logits + mask).argmax(1)
        return float((pred == self.test.targets[keep]).double().mean())

    def after_training_exp(self, strategy, *args, **kwargs):
        exp = strategy.experience
        self.seen |= set(torch.as_tensor(list(exp.dataset.targets)).tolist())
        self.samples += len(exp.dataset)
        if self.samples > self.next_point:  # written out again: the authors' rule
            self.next_point += self.every
            self.accuracies.append(self.accuracy(strategy.model))
        assert len(self.metric.accuracies) == len(self.accuracies)


def _setup(bm, test, every=50, by_hand=True):
    torch.manual_seed(0)
    model = nn.Linear(8, 6)
    periodic = SeenClassesEvaluation(test, every=every)
    auc, last = AnytimeAccuracy(), LastAccuracy()
    hand = HandAccuracy(test, auc, every)
    strategy = Naive(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                     train_mb_size=16, eval_mb_size=64,
                     plugins=[periodic, hand] if by_hand else [periodic],
                     evaluator=EvaluationPlugin(auc, last, loggers=[]))
    return strategy, periodic, auc, last, hand


def _stream(n_tasks=3):
    train, test = blobs(), blobs(per_class=10, seed=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        bm = si_blurry_benchmark(train, test, n_tasks=n_tasks, seed=1, online=True,
                                 experience_size=16)
    return bm, test


def test_a_auc_and_a_last_equal_the_hand_computed_ones():
    bm, test = _stream()
    strategy, periodic, auc, last, hand = _setup(bm, test)
    for exp in bm.train_stream:
        strategy.train(exp)
    assert len(hand.accuracies) >= 3
    assert auc.accuracies == pytest.approx(hand.accuracies, abs=1e-12)
    assert auc.result() == pytest.approx(sum(hand.accuracies) / len(hand.accuracies))
    assert last.result() is None  # no evaluation of the final stream yet
    used = sorted({c for g in bm.disjoint_classes + bm.blurry_classes for c in g})
    assert periodic.seen_classes == used == sorted(hand.seen)
    results = strategy.eval(periodic.seen_stream())
    assert results["A_last/eval_phase/seen_test_stream"] == pytest.approx(
        hand.accuracy(strategy.model), abs=1e-12)
    assert len(auc.accuracies) == len(hand.accuracies)  # the final evaluation is not a point
    assert periodic.samples_seen == sum(len(e.dataset) for e in bm.train_stream)


def test_the_state_is_checkpointed_and_resuming_gives_the_same_figures(tmp_path):
    bm, test = _stream()
    exps = list(bm.train_stream)
    full, periodic, auc, last, _ = _setup(bm, test, by_hand=False)
    for exp in exps:
        full.train(exp)
    half = len(exps) // 2
    first, p1, a1, _, _ = _setup(bm, test, by_hand=False)
    for exp in exps[:half]:
        first.train(exp)
    save_checkpoint(first, tmp_path / "ckpt.pt")
    resumed, p2, a2, _, _ = _setup(bm, test, by_hand=False)
    resumed, start = maybe_load_checkpoint(resumed, tmp_path / "ckpt.pt")
    assert start == half
    assert p2.state_dict() == p1.state_dict() and a2.accuracies == a1.accuracies
    for exp in exps[start:]:
        resumed.train(exp)
    assert a2.accuracies == pytest.approx(auc.accuracies, abs=1e-6)
    assert p2.state_dict() == periodic.state_dict()


def test_bad_states_and_arguments_are_refused():
    _, test = _stream()
    plugin = SeenClassesEvaluation(test, every=10)
    before = plugin.state_dict()
    assert_refused(lambda: plugin.load_state_dict({"samples_seen": -1, "next_point": 10,
                                                   "seen_classes": []}), "samples_seen",
                   state=plugin.state_dict)
    assert plugin.state_dict() == before
    metric = AnytimeAccuracy()
    with pytest.raises(ValueError, match="accuracies"):
        metric.load_state_dict({"accuracies": [1.5]})
    assert metric.accuracies == []
    assert_refused(lambda: SeenClassesEvaluation(test, every=0), "every")
    assert_refused(lambda: SeenClassesEvaluation([1, 2]), "test")
    assert_refused(lambda: AnytimeAccuracy(stream_name=""), "stream_name")
    assert_refused(lambda: LastAccuracy(restrict_to_seen=1), "restrict_to_seen")
    assert_refused(lambda: seen_classes_stream(test, [17]), "classes")
    assert_refused(lambda: seen_classes_stream(test, [1.5]), "classes")
    assert_refused(lambda: seen_classes_stream(test, [], name=3), "classes")
    assert_refused(lambda: seen_classes_stream(test, 3), "classes")
    assert_refused(lambda: seen_classes_stream(test, [1], name=3), "name")


def test_the_seen_classes_stream_holds_those_classes_only():
    _, test = _stream()
    stream = seen_classes_stream(test, [4, 1])
    (exp,) = list(stream)
    assert stream.name == "seen_test" and sorted(exp.classes_in_this_experience) == [1, 4]
    want = torch.nonzero(torch.isin(test.targets, torch.tensor([1, 4]))).flatten()
    assert sorted(exp.dataset.targets) == sorted(test.targets[want].tolist())


def test_analytic_cil_evaluates_on_the_seen_classes_mid_stream():
    bm, test = _stream()
    periodic = SeenClassesEvaluation(test, every=60)
    auc = AnytimeAccuracy()
    strategy = AnalyticCIL(backbone=nn.Identity(), feature_dim=8, buffer_size=64,
                           train_mb_size=16, plugins=[periodic],
                           evaluator=EvaluationPlugin(auc, loggers=[]))
    for exp in bm.train_stream:
        strategy.train(exp)
    assert len(auc.accuracies) >= 2 and 0.5 < auc.result() <= 1.0
