"""The Si-Blurry split: the reference sampler's rules (the default) and the balanced rules.

The rules (KHU-AGI/Si-Blurry, utils/online_sampler.py, the stochastic branch) are
re-implemented below from their description, with plain Python lists and a
pluggable source of random draws: with torch draws in the documented order it
must give the very same split; with numpy draws, the same statistics over many
seeds.
"""

import math
import warnings

import numpy as np
import pytest
import torch
from bad_input import assert_refused

from neve.benchmarks import LabelledTensorDataset, si_blurry_benchmark, si_blurry_split
from neve.benchmarks.si_blurry import reference_class_counts, reference_cuts


# ----------------------------------------------------------- an independent implementation
class TorchDraws:
    def __init__(self, seed):
        self.gen = torch.Generator().manual_seed(seed)

    def permutation(self, n):
        return torch.randperm(n, generator=self.gen).tolist()

    def below(self, k, n):
        return torch.randint(0, k, (n,), generator=self.gen).tolist()


class NumpyDraws:
    def __init__(self, seed):
        self.rng = np.random.default_rng(seed)

    def permutation(self, n):
        return self.rng.permutation(n).tolist()

    def below(self, k, n):
        return self.rng.integers(0, k, n).tolist()


def rules_by_hand(labels, n_tasks, n_pct, m_pct, draws):
    """The reference rules, sample by sample; returns (tasks, disjoint groups, blurry groups)."""
    classes = sorted(set(labels))
    n_disjoint = len(classes) * n_pct // 100 // n_tasks * n_tasks
    n_blurry = (len(classes) - n_disjoint) // n_tasks * n_tasks
    order = [classes[i] for i in draws.permutation(len(classes))]

    def cuts(k):
        return [0] * (n_tasks + 1) if k == 0 else [0, *sorted(draws.below(k, n_tasks - 1)), k]

    dc, bc = cuts(n_disjoint), cuts(n_blurry)
    disjoint = [order[dc[t]:dc[t + 1]] for t in range(n_tasks)]
    blurry = [order[n_disjoint + bc[t]:n_disjoint + bc[t + 1]] for t in range(n_tasks)]
    own_d = [[i for i, y in enumerate(labels) if y in disjoint[t]] for t in range(n_tasks)]
    own_b = [[i for i, y in enumerate(labels) if y in blurry[t]] for t in range(n_tasks)]
    n_moved = sum(map(len, own_b)) * m_pct // 100
    if n_moved:
        share = cuts(n_moved)
        sizes = [share[t + 1] - share[t] for t in range(n_tasks)]
        pool = []
        for t in range(n_tasks):
            pool += own_b[t][:sizes[t]]
            own_b[t] = own_b[t][sizes[t]:]
        pool = [pool[i] for i in draws.permutation(len(pool))]
        for t in range(n_tasks):
            own_b[t] += pool[:sizes[t]]
            pool = pool[sizes[t]:]
    tasks = []
    for t in range(n_tasks):
        idx = own_d[t] + own_b[t]
        tasks.append([idx[i] for i in draws.permutation(len(idx))])
    return tasks, disjoint, blurry


def split(targets, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return si_blurry_split(torch.as_tensor(targets), **kw)


def shuffled_labels(n_classes, per_class, seed):
    labels = torch.arange(n_classes).repeat_interleave(per_class)
    return labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))]


CASES = [(100, 20, 7, 50, 10), (10, 30, 5, 50, 10), (10, 30, 3, 30, 30), (20, 10, 4, 0, 50),
         (20, 10, 4, 100, 50), (12, 8, 4, 50, 100)]


@pytest.mark.parametrize("case", CASES, ids=str)
def test_split_equals_the_rules_written_by_hand(case):
    n_classes, per_class, n_tasks, n_pct, m_pct = case
    for sort in (False, True):
        labels = shuffled_labels(n_classes, per_class, 7)
        if sort:
            labels = labels.sort().values
        for seed in range(8):
            tasks, disjoint, blurry = split(labels, n_tasks=n_tasks,
                                            disjoint_class_ratio=n_pct / 100,
                                            blurry_sample_ratio=m_pct / 100, seed=seed)
            want = rules_by_hand(labels.tolist(), n_tasks, n_pct, m_pct, TorchDraws(seed))
            assert [t.tolist() for t in tasks] == want[0]
            assert (disjoint, blurry) == (want[1], want[2])


# ------------------------------------------------------------------------- the rules
def test_class_counts_are_multiples_of_the_task_count_and_the_rest_is_dropped():
    assert reference_class_counts(100, 7, 0.5) == (49, 49)
    assert reference_class_counts(10, 3, 0.5) == (3, 6)
    assert reference_class_counts(10, 4, 0.5) == (4, 4)
    assert reference_class_counts(100, 1, 0.29) == (29, 71)  # 29%, not 28.999...%
    assert reference_class_counts(10, 5, 0.0) == (0, 10)
    labels = shuffled_labels(100, 3, 0)
    with pytest.warns(UserWarning, match=r"drops classes \[\d+, \d+\]"):
        tasks, disjoint, blurry = si_blurry_split(labels, n_tasks=7, seed=3)
    assert (sum(map(len, disjoint)), sum(map(len, blurry))) == (49, 49)
    used = {c for g in disjoint + blurry for c in g}
    dropped = set(range(100)) - used
    assert len(dropped) == 2
    in_tasks = set(labels[torch.cat(tasks)].tolist())
    assert in_tasks == used and len(torch.cat(tasks)) == 98 * 3
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        kept = si_blurry_split(labels, n_tasks=7, seed=3, rules="balanced")
    assert sorted(torch.cat(kept[0]).tolist()) == list(range(300))


def test_cut_points_come_from_zero_to_k_minus_one_without_redraw():
    gen = torch.Generator().manual_seed(0)
    draws = [reference_cuts(5, 5, gen) for _ in range(2000)]
    inner = [c for d in draws for c in d[1:-1]]
    assert min(inner) == 0 and max(inner) == 4  # never 5: the last task owns a class
    assert all(d[0] == 0 and d[-1] == 5 and d[1:-1] == sorted(d[1:-1]) for d in draws)
    assert reference_cuts(0, 3, gen) == [0, 0, 0, 0]
    # no redraw: tasks owning no class (or nothing at all) happen, the last one never does
    labels = shuffled_labels(10, 20, 1)
    ownerless, empty = 0, 0
    for seed in range(100):
        tasks, disjoint, blurry = split(labels, n_tasks=5, seed=seed)
        assert disjoint[-1] and blurry[-1]
        ownerless += sum(not (d or b) for d, b in zip(disjoint, blurry, strict=True))
        empty += sum(len(t) == 0 for t in tasks)
    assert ownerless > 0 and empty > 0
    for seed in range(100):  # the balanced rules redraw until every task owns a class
        _, disjoint, blurry = split(labels, n_tasks=5, seed=seed, rules="balanced")
        assert all(d or b for d, b in zip(disjoint, blurry, strict=True))


def _departures(labels, tasks, blurry):
    """Per task owning blurry samples: (share of its first samples, up to the last one that
    left, that left; source classes of the samples that left)."""
    density, sources = [], set()
    for t, group in enumerate(blurry):
        own = torch.nonzero(torch.isin(labels, torch.tensor(group, dtype=torch.long)))
        own = own.flatten().tolist()
        here = set(tasks[t].tolist())
        left = [p for p, i in enumerate(own) if i not in here]
        if left:
            assert all(i in here for i in own[max(left) + 1:])
            density.append(len(left) / (max(left) + 1))
            sources |= {int(labels[own[p]]) for p in left}
    return density, len(sources)


def test_each_task_gives_up_its_first_blurry_samples_in_dataset_order():
    labels = torch.arange(20).repeat_interleave(50)  # class-sorted data
    runs = {}
    for rules in ("reference", "balanced"):
        density, sources = [], []
        for seed in range(10):
            tasks, _, blurry = split(labels, n_tasks=5, seed=seed, blurry_sample_ratio=0.2,
                                     rules=rules)
            d, s = _departures(labels, tasks, blurry)
            density += d
            sources.append(s)
        runs[rules] = np.mean(density), np.mean(sources)
    # reference: the samples that left are the first ones, but for those dealt back home
    assert runs["reference"][0] > 0.6 and runs["balanced"][0] < 0.4, runs
    assert runs["reference"][1] < runs["balanced"][1] / 2, runs  # from few source classes


def test_each_task_is_dealt_its_nominal_share_so_task_sizes_change():
    labels = shuffled_labels(20, 30, 2)
    changed = 0
    for seed in range(30):
        tasks, disjoint, blurry = split(labels, n_tasks=4, seed=seed, blurry_sample_ratio=0.3)
        own = [int(torch.isin(labels, torch.tensor(d + b, dtype=torch.long)).sum())
               for d, b in zip(disjoint, blurry, strict=True)]
        changed += [len(t) for t in tasks] != own
        assert sum(map(len, tasks)) == sum(own)  # every used sample once
        for idx in tasks:  # each task's samples are shuffled
            assert len(idx) < 3 or idx.tolist() != sorted(idx.tolist())
        tasks, disjoint, blurry = split(labels, n_tasks=4, seed=seed, blurry_sample_ratio=0.3,
                                        rules="balanced")
        own = [int(torch.isin(labels, torch.tensor(d + b, dtype=torch.long)).sum())
               for d, b in zip(disjoint, blurry, strict=True)]
        assert [len(t) for t in tasks] == own  # balanced: back exactly what it gave
    assert changed >= 10  # whenever a task held fewer blurry samples than its share


def statistics(splits, labels):
    sizes, n_disjoint, n_blurry, moved, empty = [], [], [], [], []
    for tasks, disjoint, blurry in splits:
        owner = {c: t for t, g in enumerate(disjoint + blurry) for c in g}
        owner = {c: t % len(tasks) for c, t in owner.items()}
        sizes.append([len(t) for t in tasks])
        n_disjoint.append([len(g) for g in disjoint])
        n_blurry.append([len(g) for g in blurry])
        flat = [(t, int(labels[i])) for t, idx in enumerate(tasks) for i in list(idx)]
        moved.append(sum(owner[c] != t for t, c in flat) / len(flat))
        empty.append([len(t) == 0 for t in tasks])
    return {k: np.asarray(v, dtype=float) for k, v in
            dict(sizes=sizes, disjoint=n_disjoint, blurry=n_blurry, moved=moved,
                 empty=empty).items()}


@pytest.mark.parametrize("case", [(10, 20, 5, 50, 10), (10, 20, 3, 50, 30)], ids=str)
def test_statistics_over_200_seeds_match_the_rules_with_other_random_draws(case):
    n_classes, per_class, n_tasks, n_pct, m_pct = case
    labels = shuffled_labels(n_classes, per_class, 0)
    ours = statistics([split(labels, n_tasks=n_tasks, disjoint_class_ratio=n_pct / 100,
                             blurry_sample_ratio=m_pct / 100, seed=s) for s in range(200)],
                      labels)
    ref = statistics([rules_by_hand(labels.tolist(), n_tasks, n_pct, m_pct, NumpyDraws(s))
                      for s in range(200)], labels)
    for key in ours:
        a, b = ours[key], ref[key]
        se = np.sqrt(a.var(axis=0) / len(a) + b.var(axis=0) / len(b)) + 1e-9
        z = np.abs(a.mean(axis=0) - b.mean(axis=0)) / se
        assert np.all(z < 4.5), (key, a.mean(axis=0), b.mean(axis=0))
    # the reference's shape: the first task is short, the last owns a class of each kind
    assert ours["sizes"].mean(axis=0)[0] < ours["sizes"].mean(axis=0)[-1]
    assert ours["disjoint"][:, -1].min() >= 1 and ours["blurry"][:, -1].min() >= 1


def test_balanced_rules_split_structure():
    # moved from test_analytic.py: the guarantees of rules="balanced" (formerly the default)
    targets = torch.arange(20).repeat_interleave(30)
    tasks, disjoint, blurry = si_blurry_split(targets, n_tasks=4, disjoint_class_ratio=0.5,
                                              blurry_sample_ratio=0.2, seed=5,
                                              rules="balanced")
    flat = torch.cat(tasks)
    assert sorted(flat.tolist()) == list(range(600))  # every sample exactly once
    assert sum(map(len, disjoint)) == 10 and sum(map(len, blurry)) == 10
    assert all(d or b for d, b in zip(disjoint, blurry, strict=True))
    seen_in = {c: {t for t, idx in enumerate(tasks) if c in targets[idx].tolist()}
               for c in range(20)}
    for t, group in enumerate(disjoint):
        for c in group:
            assert seen_in[c] == {t}  # disjoint classes live in one task only
    owner = {c: t for t, g in enumerate(blurry) for c in g}
    moved = sum(int((targets[idx][:, None] == torch.tensor(
        [c for c in owner if owner[c] != t])).any(1).sum()) for t, idx in enumerate(tasks))
    assert moved > 0  # blurry samples left their class's task
    assert moved <= int(0.2 * 300)
    assert len({len(t) for t in tasks}) > 1  # uneven task sizes
    again = si_blurry_split(targets, n_tasks=4, disjoint_class_ratio=0.5,
                            blurry_sample_ratio=0.2, seed=5, rules="balanced")[0]
    assert all(torch.equal(a, b) for a, b in zip(tasks, again, strict=True))
    with pytest.raises(ValueError, match="disjoint_class_ratio"):
        si_blurry_split(targets, disjoint_class_ratio=1.5)


# ----------------------------------------------------------------------- the benchmark
def _data(n_classes=10, per_class=12, seed=0):
    labels = shuffled_labels(n_classes, per_class, seed)
    x = torch.randn(len(labels), 4, generator=torch.Generator().manual_seed(seed))
    return LabelledTensorDataset(x, labels)


def test_empty_tasks_get_no_experience_and_the_streams_say_which_task():
    train, test = _data(), _data(per_class=3, seed=1)
    seeds = [s for s in range(60) if any(len(t) == 0 for t in split(train.targets, seed=s)[0])]
    assert seeds
    bm = si_blurry_benchmark(train, test, seed=seeds[0], online=True, experience_size=7)
    assert bm.train_tasks == [t for t, idx in enumerate(bm.task_indices) if len(idx)]
    assert len(bm.train_tasks) < 5 and len(bm.task_stream) == len(bm.train_tasks)
    for exp, t in zip(bm.task_stream, bm.train_tasks, strict=True):
        assert sorted(exp.dataset.targets) == sorted(train.targets[bm.task_indices[t]].tolist())
    owning = [t for t in range(5) if bm.disjoint_classes[t] or bm.blurry_classes[t]]
    assert bm.test_tasks == owning
    for exp, t in zip(bm.test_stream, bm.test_tasks, strict=True):
        assert set(exp.dataset.targets) == set(bm.disjoint_classes[t] + bm.blurry_classes[t])
    assert sum(len(e.dataset) for e in bm.train_stream) == sum(map(len, bm.task_indices))
    assert bm.dropped_classes == []


def test_dropped_classes_are_in_no_stream():
    train, test = _data(), _data(per_class=3, seed=1)
    with pytest.warns(UserWarning, match="drops classes"):
        bm = si_blurry_benchmark(train, test, n_tasks=3, seed=0)
    assert len(bm.dropped_classes) == 1  # 3 disjoint + 6 blurry of 10
    for stream in (bm.train_stream, bm.test_stream):
        seen = {c for e in stream for c in e.dataset.targets}
        assert not seen & set(bm.dropped_classes)


def test_new_arguments_are_checked_at_the_entry():
    train, test = _data(), _data(per_class=3, seed=1)
    assert_refused(lambda: si_blurry_split(train.targets, rules="paper"), "rules")
    assert_refused(lambda: si_blurry_split(train.targets, rules=None), "rules")
    assert_refused(lambda: si_blurry_benchmark(train, test, rules="x"), "rules")
    assert_refused(lambda: si_blurry_split(train.targets, blurry_sample_ratio=math.inf),
                   "blurry_sample_ratio")
