"""Many-class CFSL with a class-change interval (issue #16.2), and its 20-class data."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from bad_input import assert_refused

from neve.benchmarks import cfsl_episodes, digits, fashion_and_digits
from neve.benchmarks.cfsl import upsample


def _sets(bm):
    return [([int(d[1]) for d in exp.dataset], torch.stack([d[0] for d in exp.dataset]))
            for exp in bm.train_stream]


@pytest.mark.parametrize("n_classes, support_sets, interval, shots",
                         [(10, 4, 2, 1), (6, 6, 3, 2), (8, 8, 2, 1)])
def test_each_class_in_exactly_interval_consecutive_sets_with_new_samples(
        digits_data, n_classes, support_sets, interval, shots):
    train, _ = digits_data
    targets = torch.as_tensor(train.targets)
    for bm in cfsl_episodes(train, 3, n_classes, shots=shots, support_sets=support_sets,
                            query_shots=5, seed=2, class_interval=interval):
        sets = _sets(bm)
        assert len(sets) == support_sets
        where = {c: [k for k, (labels, _) in enumerate(sets) if c in labels]
                 for c in range(n_classes)}
        for c, ks in where.items():
            assert len(ks) == interval and ks == list(range(ks[0], ks[0] + interval)), (c, ks)
            for k in ks:
                assert sets[k][0].count(c) == shots
        # every support item of a class is a distinct dataset item, shown once
        idx = bm.support_indices.tolist()
        assert len(set(idx)) == len(idx) == n_classes * interval * shots
        ys = torch.tensor([y for labels, _ in sets for y in labels])
        assert torch.equal(targets[bm.support_indices], bm.source_classes[ys])
        xs = torch.cat([x for _, x in sets])
        assert torch.equal(xs, torch.stack([train[i][0] for i in idx]))
        # queries: new items of the episode's classes, query_shots per class
        q = bm.query_indices.tolist()
        assert not set(q) & set(idx) and len(set(q)) == len(q)
        yq = torch.tensor([int(d[1]) for d in bm.test_stream[0].dataset])
        assert torch.equal(torch.bincount(yq), torch.full((n_classes,), 5))
        assert torch.equal(targets[bm.query_indices], bm.source_classes[yq])


def test_interval_one_draws_what_it_drew_before(digits_data):
    """class_interval=1 keeps the episodes of the earlier cfsl_episodes (same seed, same items)."""
    train, _ = digits_data
    targets = np.asarray(train.targets)
    by_class = {int(c): np.flatnonzero(targets == c) for c in np.unique(targets)}
    for e, bm in enumerate(cfsl_episodes(train, 3, 6, shots=2, support_sets=3, query_shots=3,
                                         seed=5)):
        rng = np.random.default_rng([5, e, 0])
        classes = rng.choice(sorted(by_class), size=6, replace=False)
        picked = [rng.choice(by_class[int(c)], size=5, replace=False) for c in classes]
        assert bm.source_classes.tolist() == classes.tolist()
        assert bm.support_indices.tolist() == np.concatenate([p[:2] for p in picked]).tolist()
        assert bm.query_indices.tolist() == np.concatenate([p[2:] for p in picked]).tolist()


@pytest.mark.parametrize("kwargs, argument", [
    ({"support_sets": 5, "class_interval": 2}, "class_interval"),
    ({"support_sets": 4, "class_interval": 0}, "class_interval"),
    ({"support_sets": 6, "class_interval": 2}, "n_classes"),  # 3 groups do not divide 10
])
def test_bad_interval_is_refused_by_name(digits_data, kwargs, argument):
    train, _ = digits_data
    assert_refused(lambda: cfsl_episodes(train, 1, 10, shots=1, query_shots=1, **kwargs),
                   argument)


def test_too_few_items_for_the_interval_is_refused(digits_data):
    train, _ = digits_data  # about 135 items per class
    assert_refused(lambda: cfsl_episodes(train, 1, 10, shots=70, support_sets=2,
                                         class_interval=2, query_shots=1), "class_interval")


def test_fashion_and_digits_has_20_classes_of_28x28_images(fmnist):
    data = fashion_and_digits("test")
    _, fm_test = fmnist
    _, dg_test = digits()
    assert data.data.shape == (10_000 + len(dg_test), 1, 28, 28)
    assert torch.equal(torch.unique(data.targets), torch.arange(20))
    assert torch.equal(data.data[:3], torch.stack([fm_test[i][0] for i in range(3)]))
    assert torch.equal(data.data[10_000:], upsample(dg_test.data, 28))
    assert torch.equal(data.targets[10_000:], dg_test.targets + 10)
    assert float(data.data.min()) >= 0.0 and float(data.data.max()) <= 1.0
    assert_refused(lambda: fashion_and_digits("val"), "split")
