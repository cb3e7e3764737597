"""Drift compensation (SDC), the authors' mean shrinkage, drift figures, the paper's settings."""

import copy
import dataclasses

import numpy as np
import pytest
import torch
from avalanche.training.plugins import LRSchedulerPlugin
from bad_input import assert_refused
from conftest import silent_evaluator

from neve.models import PretrainedClassifier
from neve.models.drift import mean_drift, sdc_shifts, shrink_factors
from neve.models.head_alignment import align_head
from neve.plugins import ClassGaussianStats, ClassifierAlignmentPlugin, SlowLearnerPlugin
from neve.strategies import SLCA
from neve.strategies.slca_settings import PAPER_SETTINGS


def sdc_by_hand(before, after, means, sigma):
    """SDC Eq. 7-8 with loops in numpy, on L2-normalised distances."""
    b, a, m = before.numpy().astype(float), after.numpy().astype(float), means.numpy()
    out = np.zeros_like(m)
    for c in range(len(m)):
        mc = m[c] / np.linalg.norm(m[c])
        w = np.array([np.exp(-np.sum((bi / np.linalg.norm(bi) - mc) ** 2) / (2 * sigma**2))
                      for bi in b])
        out[c] = (w[:, None] * (a - b)).sum(0) / w.sum()
    return out


def test_sdc_shifts_equal_the_weighted_mean_displacement():
    gen = torch.Generator().manual_seed(0)
    before = torch.randn(40, 5, generator=gen) + 2
    after = before + torch.randn(40, 5, generator=gen) * 0.3 + 1.0
    means = torch.randn(3, 5, generator=gen).double() + 2
    for sigma in (0.3, 1.0):
        np.testing.assert_allclose(sdc_shifts(before, after, means, sigma).numpy(),
                                   sdc_by_hand(before, after, means, sigma), rtol=1e-9)
    # a pure translation of every feature moves every mean by it
    shift = sdc_shifts(before, before + 3.0, means)
    np.testing.assert_allclose(shift.numpy(), np.full((3, 5), 3.0), rtol=1e-6)


def test_shrink_factors_are_the_authors():
    assert shrink_factors([0, 1, 2], 2) == pytest.approx([0.9 + 0.1 / 3, 0.9 + 0.2 / 3, 1.0])


def test_mean_drift_is_relative_l2_and_cosine():
    stored, actual = torch.tensor([[1.0, 0.0], [1.0, 1.0]]), torch.tensor([[0.0, 2.0], [1, 1.0]])
    rel, cos = mean_drift(stored, actual)
    np.testing.assert_allclose(rel.numpy(), [np.sqrt(5) / 2, 0.0])
    np.testing.assert_allclose(cos.numpy(), [0.0, 1.0], atol=1e-12)


def test_shift_means_moves_means_keeps_covariances_and_refuses_bad_shifts():
    gen = torch.Generator().manual_seed(1)
    x, y = torch.randn(60, 4, generator=gen), torch.arange(60) % 3
    stats = ClassGaussianStats("full", 1e-4)
    stats.update(x, y, group=0)
    covs, means = stats.covs, {c: m.clone() for c, m in stats.means.items()}
    stats.shift_means({1: torch.ones(4, dtype=torch.float64)})
    torch.testing.assert_close(stats.means[1], means[1] + 1)
    torch.testing.assert_close(stats.means[0], means[0])
    for c in covs:
        torch.testing.assert_close(stats.covs[c], covs[c])
    assert_refused(lambda: stats.shift_means({0: torch.zeros(4), 7: torch.zeros(4)}), "shifts",
                   state=stats.state_dict)
    assert_refused(lambda: stats.shift_means({0: torch.zeros(3)}), "shifts",
                   state=stats.state_dict)


def test_shrink_alignment_equals_alignment_on_scaled_means():
    gen = torch.Generator().manual_seed(2)
    x, y = torch.randn(90, 6, generator=gen) + 1, torch.arange(90) % 3
    stats = ClassGaussianStats("full", 1e-4)
    stats.update(x[y < 2], y[y < 2], group=0)
    stats.update(x[y == 2], y[y == 2], group=1)
    by_hand = copy.deepcopy(stats)
    for c, s in zip(stats.classes, shrink_factors([0, 0, 1], 1), strict=True):
        by_hand.means[c] = stats.means[c] * s

    def align(st, shrink):
        torch.manual_seed(0)
        head = torch.nn.Linear(6, 3)
        align_head(head, st, samples_per_class=32, epochs=2, lr=0.05, temperature=0.1,
                   batch_size=16, momentum=0.9, weight_decay=0.0,
                   generator=torch.Generator().manual_seed(3), device="cpu", shrink=shrink)
        return head.state_dict()

    torch.testing.assert_close(align(stats, True), align(by_hand, False), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(align(stats, True)["weight"], align(stats, False)["weight"])


def backbone():
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 8), torch.nn.ReLU())


def test_plugin_drift_compensation_moves_old_means_by_sdc(split_digits):
    def run(compensate):
        torch.manual_seed(0)
        model = PretrainedClassifier(backbone(), num_classes=2, feature_dim=8)
        strategy = SLCA(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                        train_mb_size=32, evaluator=silent_evaluator(),
                        slow_learner=SlowLearnerPlugin(1.0),
                        alignment=ClassifierAlignmentPlugin(
                            epochs=1, samples_per_class=8, drift_compensation=compensate))
        strategy.train(split_digits.train_stream[0])
        stored = {c: m.clone() for c, m in strategy.alignment.stats.means.items()}
        data = split_digits.train_stream[1].dataset.eval()
        x = torch.stack([data[i][0] for i in range(len(data))])
        with torch.no_grad():
            before = model.features(x)
        strategy.train(split_digits.train_stream[1])
        with torch.no_grad():
            after = model.features(x)
        return strategy.alignment.stats, stored, before, after

    stats, stored, before, after = run(True)
    old = sorted(stored)
    expected = sdc_by_hand(before, after, torch.stack([stored[c] for c in old]), 0.3)
    for i, c in enumerate(old):
        np.testing.assert_allclose(stats.means[c].numpy(), stored[c].numpy() + expected[i],
                                   rtol=1e-5, atol=1e-6)
        assert not torch.allclose(stats.means[c], stored[c])
    plain, stored_plain, _, _ = run(False)
    for c in old:
        assert torch.equal(plain.means[c], stored_plain[c])
    assert ClassifierAlignmentPlugin(drift_compensation=True).state_dict()["options"][
        "drift_compensation"] is True


@pytest.mark.parametrize("name, value", [
    ("drift_compensation", 1), ("drift_sigma", 0.0), ("shrink_means", "yes"),
])
def test_alignment_refuses_bad_new_options(name, value):
    assert_refused(lambda: ClassifierAlignmentPlugin(**{name: value}), name)


# ------------------------------------------------------------------ the paper's settings


def test_paper_settings_build_the_papers_strategy():
    model = PretrainedClassifier(backbone(), num_classes=2, feature_dim=8)
    strategy = SLCA.paper(model, evaluator=silent_evaluator())
    groups = strategy.optimizer.param_groups
    assert [g["lr"] for g in groups] == pytest.approx([0.01, 0.0001])
    assert all(g["momentum"] == 0.9 and g["weight_decay"] == 5e-4 for g in groups)
    head_ids = {id(p) for p in model.classifier.parameters()}
    assert {id(p) for p in groups[0]["params"]} == head_ids
    assert strategy.train_mb_size == 128 and strategy.train_epochs == 20
    align = strategy.alignment
    assert (align.epochs, align.samples_per_class, align.batch_size, align.lr,
            align.temperature) == (5, 256, 256, 0.01, 0.1)
    assert isinstance(strategy.lr_scheduler, LRSchedulerPlugin)
    assert strategy.lr_scheduler in strategy.plugins
    sched = strategy.lr_scheduler.scheduler
    assert dict(sched.milestones) == {18: 1} and sched.gamma == 0.1
    # the step decay: x0.1 on both groups after 18 epochs
    for _ in range(18):
        strategy.optimizer.step()
        sched.step()
    assert [g["lr"] for g in groups] == pytest.approx([0.001, 0.00001])
    assert PAPER_SETTINGS.norm_stats == strategy.slow_learner.norm_stats


def test_paper_settings_train_and_decay_within_an_experience(split_digits):
    model = PretrainedClassifier(backbone(), num_classes=2, feature_dim=8)
    settings = dataclasses.replace(PAPER_SETTINGS, epochs=3, lr_milestones=(2,), batch_size=64,
                                   samples_per_class=8, alignment_epochs=1)
    strategy = SLCA.paper(model, settings, evaluator=silent_evaluator(),
                          slow_learner_options={"norm_stats": "eval"})
    seen = []

    class Lr(LRSchedulerPlugin.__mro__[1]):  # a SupervisedPlugin recording the lr per epoch
        def before_training_epoch(self, strategy, **kwargs):
            seen.append([g["lr"] for g in strategy.optimizer.param_groups])

    strategy.plugins.append(Lr())
    for exp in split_digits.train_stream[:2]:
        strategy.train(exp)
    assert seen[0] == pytest.approx([0.01, 1e-4]) and seen[2] == pytest.approx([1e-3, 1e-5])
    assert seen[3] == pytest.approx([0.01, 1e-4])  # reset for the next experience
    assert_refused(lambda: SLCA.paper(model, dataclasses.replace(settings, lr_milestones=(0,))),
                   "lr_milestones")


def test_drift_functions_refuse_features_that_do_not_match_by_name():
    from neve.models.drift import drift_jacobian

    before, means = torch.randn(5, 3), torch.randn(2, 3)
    for bad, match in [(torch.randn(4, 3), r"before and after must be the same \[N >= 1, D\], "
                        r"got \(5, 3\) and \(4, 3\)"),
                       (torch.randn(5), "before and after must be the same")]:
        with pytest.raises(ValueError, match=match):
            sdc_shifts(before, bad, means)
    with pytest.raises(ValueError, match=r"before and after must be the same \[N >= 1, D\]"):
        sdc_shifts(before[:0], before[:0], means)  # no rows in one process
    with pytest.raises(ValueError, match=r"means must be \[C, 3\], got \(2, 4\)"):
        sdc_shifts(before, before, torch.randn(2, 4))
    with pytest.raises(ValueError, match="sigma must be a finite number > 0"):
        sdc_shifts(before, before, means, sigma=0.0)
    with pytest.raises(ValueError, match=r"before and after must be the same \[N, D\], got"):
        drift_jacobian(before, torch.randn(5, 2))
    with pytest.raises(ValueError, match="ridge must be a finite number > 0"):
        drift_jacobian(before, before, ridge=-1.0)
