"""Curriculum Designer: scores, ranking, search, benchmarks, F metric, bad input."""

import itertools
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
from avalanche.benchmarks.scenarios.online import split_online_stream
from avalanche.evaluation.metrics import accuracy_metrics
from avalanche.models import IncrementalClassifier
from avalanche.training.determinism.rng_manager import RNGManager
from avalanche.training.plugins import EvaluationPlugin
from avalanche.training.supervised import Naive
from avalanche.training.utils import _at_task_boundary
from resume_harness import run_full_and_resumed

from neve.benchmarks import (
    CurriculumDesigner,
    curriculum_benchmark,
    select_classes,
    si_blurry_benchmark,
    split_online,
)
from neve.benchmarks.curriculum_score import (
    normalize_rows,
    prototype_distances,
    row_variances,
    score_orders,
)
from neve.benchmarks.curriculum_search import all_orders, rank_orders
from neve.plugins import CurriculumEffectiveness, curriculum_effectiveness

ORDER = [3, 7, 1, 9, 0, 2, 4, 5, 6, 8]


def walk_score(order, d, var):
    """Independent re-statement of the authors' walk: stop once 1 + 2 steps covers n."""
    n = len(order)
    s = 1 - var[order[0]]
    covered = 1
    for k in range(n - 1):
        s += (1 - d[order[k]][order[n - 1 - k]]) + d[order[k]][order[k + 1]]
        covered += 2
        if covered >= n:
            break
    return s


def random_instance(n, seed):
    rng = np.random.default_rng(seed)
    protos = torch.from_numpy(rng.normal(size=(n, 16)) + 0.5)
    d = normalize_rows(prototype_distances(protos, "cosine"))
    return d, row_variances(d)


def test_prototype_distances_refuse_an_unknown_distance_by_name():
    protos = torch.eye(3, dtype=torch.float64)
    euclid = prototype_distances(protos, "euclidean")
    assert np.allclose(euclid, np.sqrt(2) * (1 - np.eye(3)))  # unit vectors: |e_i - e_j|
    with pytest.raises(ValueError, match=r"distance must be one of \('cosine', 'euclidean'\), "
                       r"got 'manhattan'$"):
        prototype_distances(protos, "manhattan")
    with pytest.raises(ValueError, match="otdd needs per-class samples: neve.benchmarks.otdd"):
        prototype_distances(protos, "otdd")


# ----------------------------------------------------------------------------- scores
def test_score_of_hand_computed_three_class_example():
    # 1-d prototypes at x=0 (class 0), x=1 (class 1), x=-2 (class 2): D01=1, D02=2, D12=3
    feats = torch.tensor([[-0.5, 0.0], [0.5, 0.0], [1.0, 1.0], [1.0, -1.0], [-2.0, 0.0]])
    feats = feats.double()
    targets = torch.tensor([0, 0, 1, 1, 2])
    cd = CurriculumDesigner(distance="euclidean", max_per_class=None).fit_features(feats, targets)
    assert torch.allclose(
        cd.distance_matrix, torch.tensor([[0.0, 1, 2], [1, 0, 3], [2, 3, 0]], dtype=torch.float64)
    )
    F = Fraction
    rows = [[F(0), F(1, 3), F(2, 3)], [F(1, 4), F(0), F(3, 4)], [F(2, 5), F(3, 5), F(0)]]
    var = [sum((x - F(1, 3)) ** 2 for x in r) / 3 for r in rows]  # 2/27, 7/72, 14/225
    assert var == [F(2, 27), F(7, 72), F(14, 225)]
    var = [v / sum(var) for v in var]
    # order (1, 0, 2): (1 - var[1]) + (1 - d(1, 2)) + d(1, 0)
    expected = 1 - var[1] + (1 - rows[1][2]) + rows[1][0]
    assert cd.score([1, 0, 2]) == pytest.approx(float(expected), abs=1e-12)
    # order (2, 1, 0): (1 - var[2]) + (1 - d(2, 0)) + d(2, 1)
    expected = 1 - var[2] + (1 - rows[2][0]) + rows[2][1]
    assert cd.score([2, 1, 0]) == pytest.approx(float(expected), abs=1e-12)


def test_five_class_score_matches_the_papers_formula():
    d, var = random_instance(5, 3)
    for a, b, c, dd, e in itertools.permutations(range(5)):
        paper = (1 - var[a]) + d[a, b] + (1 - d[a, e]) + d[b, c] + (1 - d[b, dd])
        got = score_orders(np.array([[a, b, c, dd, e]]), d, var)[0]
        assert got == pytest.approx(paper, abs=1e-12)


def test_even_n_last_step_adds_a_constant_one():
    d, var = random_instance(4, 5)
    for o in itertools.permutations(range(4)):
        a, b, c, e = o
        assert score_orders(np.array([o]), d, var)[0] == pytest.approx(
            (1 - var[a]) + d[a, b] + (1 - d[a, e]) + 1.0, abs=1e-12
        )


def test_normalisation_rows_sum_to_one_and_variances_sum_to_one():
    d, var = random_instance(7, 0)
    assert np.allclose(d.sum(1), 1.0)
    assert var.sum() == pytest.approx(1.0)
    assert np.allclose(var * np.var(d, axis=1).sum(), np.var(d, axis=1))


# ----------------------------------------------------------------------------- ranking
def test_rank_equals_brute_force_on_six_classes():
    rng = np.random.default_rng(0)
    feats = torch.from_numpy(rng.normal(size=(60, 8)) + 1.0)
    targets = torch.arange(6).repeat_interleave(10) * 2  # labels 0, 2, ..., 10
    cd = CurriculumDesigner(max_per_class=None).fit_features(feats, targets)
    orders, scores = cd.rank(return_scores=True)
    labels = sorted(set(targets.tolist()))
    d, var = cd.normalized_distances()
    pos = {c: i for i, c in enumerate(labels)}
    brute = sorted(
        ((walk_score([pos[c] for c in p], d, var), p) for p in itertools.permutations(labels)),
        key=lambda t: -t[0],
    )
    assert len(orders) == 720
    assert np.allclose(scores, [s for s, _ in brute], atol=1e-12)
    assert orders[0] == brute[0][1] and cd.best_order() == brute[0][1]
    assert all(
        cd.score(o) == pytest.approx(s, abs=1e-12)
        for o, s in zip(orders[:20], scores[:20], strict=True)
    )
    # top_k and a subset of classes: the subset's own normalisation
    sub = cd.rank(classes=[4, 0, 8], top_k=2)
    d3, v3 = cd.normalized_distances([0, 4, 8])
    p3 = {0: 0, 4: 1, 8: 2}
    best3 = max(
        itertools.permutations([0, 4, 8]), key=lambda o: walk_score([p3[c] for c in o], d3, v3)
    )
    assert len(sub) == 2 and sub[0] == best3


def test_beam_search_finds_brute_force_optimum_on_random_eight_class_instances():
    # measured: 50/50 (and 100/100) with the default width 256 for 8 classes
    hits = 0
    n_inst = 30
    for seed in range(n_inst):
        d, var = random_instance(8, 100 + seed)
        best = score_orders(all_orders(8), d, var).max()
        _, scores = rank_orders(d, var, search="beam")
        assert scores[0] <= best + 1e-12
        hits += bool(abs(scores[0] - best) < 1e-12)
    assert hits >= 27, f"beam search found the optimum on only {hits}/{n_inst}"


def test_search_on_many_classes_returns_valid_orders_better_than_random():
    d, var = random_instance(100, 7)
    orders, scores = rank_orders(d, var, top_k=5)
    assert orders.shape == (5, 100)
    for o in orders:
        assert sorted(o.tolist()) == list(range(100))
    assert np.allclose(scores, score_orders(orders, d, var))
    rng = np.random.default_rng(0)
    rand = np.stack([rng.permutation(100) for _ in range(2000)])
    assert scores[0] > score_orders(rand, d, var).max()


# ----------------------------------------------------------------------------- benchmarks
@pytest.fixture(scope="module")
def digits_pair():
    from neve.benchmarks import digits

    return digits(seed=0)


def test_benchmark_experiences_follow_the_order(digits_pair):
    train, test = digits_pair
    bm = curriculum_benchmark(train, test, ORDER, classes_per_experience=2)
    for stream in (bm.train_stream, bm.test_stream):
        assert len(stream) == 5
        for i, exp in enumerate(stream):
            want = ORDER[2 * i : 2 * i + 2]
            assert sorted(exp.classes_in_this_experience) == sorted(want)
            assert set(torch.as_tensor(list(exp.dataset.targets)).tolist()) == set(want)
    n_train = {c: int((torch.as_tensor(train.targets) == c).sum()) for c in ORDER}
    assert [len(e.dataset) for e in bm.train_stream] == [
        n_train[ORDER[2 * i]] + n_train[ORDER[2 * i + 1]] for i in range(5)
    ]
    # one class per experience, on a subset of the classes
    sub = [8, 2, 5]
    bm1 = curriculum_benchmark(select_classes(train, sub), test, sub)
    assert [list(e.classes_in_this_experience) for e in bm1.train_stream] == [[8], [2], [5]]
    assert [list(e.classes_in_this_experience) for e in bm1.test_stream] == [[8], [2], [5]]


def test_online_benchmark_follows_the_order_single_pass(digits_pair):
    train, test = digits_pair
    bm = curriculum_benchmark(
        train, test, ORDER, classes_per_experience=2, online=True, experience_size=32
    )
    offline = curriculum_benchmark(train, test, ORDER, classes_per_experience=2)
    subs = list(bm.train_stream)
    origins = [s.origin_experience.current_experience for s in subs]
    assert origins == sorted(origins) and set(origins) == set(range(5))
    for i in range(5):
        mine = [s for s in subs if s.origin_experience.current_experience == i]
        want = set(ORDER[2 * i : 2 * i + 2])
        got = torch.cat([torch.as_tensor(list(s.dataset.targets)) for s in mine])
        assert set(got.tolist()) == want
        assert len(got) == len(offline.train_stream[i].dataset)  # every item exactly once
        assert all(len(s.dataset) <= 32 for s in mine)
        assert [s.is_last_subexp for s in mine] == [False] * (len(mine) - 1) + [True]
        assert [s.is_first_subexp for s in mine] == [True] + [False] * (len(mine) - 1)
    assert [sorted(e.classes_in_this_experience) for e in bm.test_stream] == [
        sorted(ORDER[2 * i : 2 * i + 2]) for i in range(5)
    ]


def _exp_of_size(digits_pair, n_classes=2):
    train, test = digits_pair
    bm = curriculum_benchmark(select_classes(train, [0, 1]), select_classes(test, [0, 1]), [0, 1])
    return bm


def test_avalanche_split_online_stream_problems_and_neve_workaround(digits_pair):
    bm = _exp_of_size(digits_pair)
    exp0 = bm.train_stream[0]
    n = len(exp0.dataset)
    size = next(s for s in range(16, n) if n % s == 0)  # a size dividing the data
    # problem 2 (Avalanche): no sub-experience is the last one
    theirs = list(split_online_stream([exp0], size, access_task_boundaries=True, seed=0))
    assert len(theirs) >= 2 and not any(s.is_last_subexp for s in theirs)
    assert not any(_at_task_boundary(s, before=False) for s in theirs)
    # problem 1 (Avalanche): no classes_in_this_experience
    with pytest.raises(AttributeError, match="classes_in_this_experience"):
        theirs[0].classes_in_this_experience  # noqa: B018
    # neve: the last sub-experience is marked, so the after-boundary hook fires there
    ours = list(split_online([exp0, bm.train_stream[1]], size, seed=0))
    for origin in (0, 1):
        part = [s for s in ours if s.origin_experience.current_experience == origin]
        flags = [bool(_at_task_boundary(s, before=False)) for s in part]
        assert flags == [False] * (len(part) - 1) + [True]
        assert all(s.classes_in_this_experience == [origin] for s in part)
    first_of_1 = next(s for s in ours if s.origin_experience.current_experience == 1)
    assert first_of_1.previous_classes == [0] and first_of_1.classes_seen_so_far == [0, 1]
    assert ours[0].future_classes == [1]


def test_split_online_with_incremental_classifier_trains(digits_pair):
    bm = _exp_of_size(digits_pair)
    for boundaries in (False, True):
        net, strat = _incremental_naive()
        stream = split_online(bm.train_stream, 32, access_task_boundaries=boundaries)
        for sub in stream:
            strat.train(sub)  # Avalanche's own split raises AttributeError here
        assert net.head.classifier.out_features == 2


def _incremental_naive(in_features=64):
    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.head = IncrementalClassifier(in_features, initial_out_features=1)

        def forward(self, x):
            return self.head(x.flatten(1))

    torch.manual_seed(0)
    net = Net()
    strat = Naive(
        model=net,
        optimizer=torch.optim.SGD(net.parameters(), lr=0.1),
        criterion=torch.nn.CrossEntropyLoss(),
        train_mb_size=32,
        train_epochs=1,
        evaluator=EvaluationPlugin(loggers=[]),
    )
    return net, strat


def test_online_si_blurry_trains_an_incremental_classifier(digits_pair):
    # issue #11 finding 4: Avalanche's split_online_stream gave experiences without
    # classes_in_this_experience, and IncrementalClassifier raised AttributeError
    train, test = digits_pair
    bm = si_blurry_benchmark(train, test, n_tasks=3, seed=0, online=True, experience_size=50)
    offline = si_blurry_benchmark(train, test, n_tasks=3, seed=0)
    subs = list(bm.train_stream)
    for sub in subs:
        got = set(torch.as_tensor(list(sub.dataset.targets)).tolist())
        assert sorted(got) == sub.classes_in_this_experience
        assert len(sub.dataset) <= 50
    # the online stream cuts each task in its shuffled order, every item once
    for t, task in enumerate(offline.train_stream):
        mine = [s for s in subs if s.origin_experience.current_experience == t]
        assert [s.is_last_subexp for s in mine] == [False] * (len(mine) - 1) + [True]
        cut = torch.cat([torch.as_tensor(list(s.dataset.targets)) for s in mine])
        assert torch.equal(cut, torch.as_tensor(list(task.dataset.targets)))
    net, strat = _incremental_naive()
    for sub in subs:
        strat.train(sub)
    assert net.head.classifier.out_features == 10


def test_keywords_renamed_before_any_release_are_refused(digits_pair):
    """The pre-release names are gone (never in a release): Python refuses them by name."""
    train, test = digits_pair
    with pytest.raises(TypeError, match="online_batch_size"):
        si_blurry_benchmark(train, test, n_tasks=3, online=True, online_batch_size=40)
    with pytest.raises(TypeError, match="mb_size"):
        curriculum_benchmark(select_classes(train, [0, 1]), test, [0, 1], online=True, mb_size=30)
    with pytest.raises(TypeError, match="samples_per_class"):
        CurriculumDesigner(samples_per_class=7)
    assert not hasattr(CurriculumDesigner(max_per_class=7), "samples_per_class")


# ----------------------------------------------------------------------------- F
def test_f_equals_hand_computation():
    acc = np.array([[0.9, np.nan, np.nan], [0.6, 0.8, np.nan], [0.5, 0.7, 0.9]])
    alpha, beta, f = curriculum_effectiveness(acc)
    assert alpha == pytest.approx(0.7)
    assert beta == pytest.approx(0.4)
    assert f == pytest.approx(2 * 0.7 / (0.4 * 0.7 + 1))  # 1.09375
    assert f == pytest.approx(1.09375)
    with pytest.raises(ValueError, match="accuracy"):
        curriculum_effectiveness(np.array([[np.nan]]))


def _linear_naive_with_f(train_epochs):
    """A seeded linear Naive learner whose evaluator holds CurriculumEffectiveness."""
    RNGManager.set_random_seeds(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    metric = CurriculumEffectiveness()
    strat = Naive(
        model=model,
        optimizer=torch.optim.Adam(model.parameters(), lr=1e-2),
        criterion=torch.nn.CrossEntropyLoss(),
        train_mb_size=16,
        train_epochs=train_epochs,
        evaluator=EvaluationPlugin(accuracy_metrics(experience=True), metric, loggers=[]),
    )
    return metric, strat


def test_metric_reports_f_from_avalanche_accuracies(digits_pair):
    train, test = digits_pair
    order = [6, 1, 4]
    bm = curriculum_benchmark(select_classes(train, order), select_classes(test, order), order)
    metric, strat = _linear_naive_with_f(train_epochs=3)
    acc = np.full((3, 3), np.nan)
    for t, exp in enumerate(bm.train_stream):
        strat.train(exp)
        res = strat.eval(bm.test_stream)
        for j in range(3):
            acc[t, j] = res[f"Top1_Acc_Exp/eval_phase/test_stream/Task000/Exp{j:03d}"]
        alpha = np.mean(acc[t, : t + 1])
        beta = acc[0, 0] - acc[t, 0]
        assert res["CurriculumAlpha/eval_phase/test_stream"] == pytest.approx(alpha)
        assert res["CurriculumBeta/eval_phase/test_stream"] == pytest.approx(beta)
        assert res["CurriculumF/eval_phase/test_stream"] == pytest.approx(
            2 * alpha / (beta * alpha + 1)
        )
    assert np.allclose(metric.accuracy_matrix("test"), acc)
    assert acc[0, 0] > 0.9 and acc[2, 0] < acc[0, 0]  # it learned, then forgot
    # two streams in one evaluation are kept apart
    with pytest.warns(UserWarning, match="'train' was not evaluated on experience 0"):
        both = strat.eval(list(bm.test_stream) + list(bm.train_stream))
    assert "CurriculumF/eval_phase/train_stream" not in both  # undefined without acc[0, 0]
    assert both["CurriculumF/eval_phase/test_stream"] == res["CurriculumF/eval_phase/test_stream"]
    assert np.allclose(metric.accuracy_matrix("test"), acc)
    state = metric.state_dict()
    other = CurriculumEffectiveness()
    other.load_state_dict(state)
    assert np.allclose(other.accuracy_matrix("test"), acc)


def test_resumed_run_reports_the_same_f_and_weights(tmp_path):
    a, b = run_full_and_resumed(Path(__file__).with_name("curriculum_digits_run.py"), tmp_path)
    assert sorted(b["fs"]) == [3, 4]
    for k in a["state"]:
        assert torch.equal(a["state"][k], b["state"][k]), k
    assert a["fs"][4] == b["fs"][4] and a["fs"][3] == b["fs"][3]


# ----------------------------------------------------------------------------- state, bad input
def test_designer_state_dict_round_trip():
    d_feats = torch.randn(40, 5, generator=torch.Generator().manual_seed(0)) + 1
    targets = torch.arange(4).repeat(10)
    cd = CurriculumDesigner(max_per_class=7, seed=3).fit_features(d_feats, targets)
    other = CurriculumDesigner()
    other.load_state_dict(cd.state_dict())
    assert other.rank() == cd.rank()
    assert other.score([2, 0, 3, 1]) == cd.score([2, 0, 3, 1])
    assert other.max_per_class == 7 and other.seed == 3
    # the key of a format never released (samples_per_class) is refused, naming the missing key,
    # and nothing changes
    old = {
        ("samples_per_class" if k == "max_per_class" else k): v for k, v in cd.state_dict().items()
    }
    older = CurriculumDesigner()
    with pytest.raises(ValueError, match=r"without \['max_per_class'\]"):
        older.load_state_dict(old)
    assert older.max_per_class == 500 and not hasattr(older, "distances_")
    # max_per_class is honoured: the prototypes use 7 of the 10 items of each class
    assert not torch.allclose(
        cd.prototypes_,
        CurriculumDesigner(max_per_class=None).fit_features(d_feats, targets).prototypes_,
    )


def test_bad_input_raises_clear_errors(digits_pair):
    train, test = digits_pair
    feats = torch.randn(30, 4) + 1
    targets = torch.arange(3).repeat(10)
    cd = CurriculumDesigner().fit_features(feats, targets)
    with pytest.raises(ValueError, match=r"repeats classes \[1\]"):
        cd.score([1, 0, 1])
    with pytest.raises(ValueError, match=r"misses \[2\]"):
        cd.score([1, 0], classes=[0, 1, 2])
    with pytest.raises(ValueError, match=r"at least 2 classes"):
        cd.score([1])
    with pytest.raises(ValueError, match=r"\[7\] not fitted"):
        cd.rank(classes=[0, 7])
    with pytest.raises(ValueError, match=r"at least 2 classes"):
        cd.rank(classes=[0])
    with pytest.raises(ValueError, match=r"classes \[5\] have no samples"):
        CurriculumDesigner().fit_features(feats, targets, classes=[0, 1, 5])
    with pytest.raises(ValueError, match=r"at least 2 classes"):
        CurriculumDesigner().fit_features(feats[:10], torch.zeros(10, dtype=torch.long))
    with pytest.raises(ValueError, match="distance"):
        CurriculumDesigner(distance="manhattan").fit_features(feats, targets)
    with pytest.raises(RuntimeError, match="not fitted"):
        CurriculumDesigner().rank()
    # the benchmark
    with pytest.raises(ValueError, match=r"repeats classes \[3\]"):
        curriculum_benchmark(train, test, [3, 3, 1, 9, 0, 2, 4, 5, 6, 8])
    # an order over a subset of the classes is a benchmark over that subset (issue #11.11)
    assert len(curriculum_benchmark(train, test, ORDER[:-1]).train_stream) == 9
    with pytest.raises(ValueError, match=r"classes \[42\] with no samples in train"):
        curriculum_benchmark(train, test, ORDER + [42])
    with pytest.raises(ValueError, match=r"at least 2 classes"):
        curriculum_benchmark(select_classes(train, [3]), test, [3])
    with pytest.raises(ValueError, match="classes_per_experience"):
        curriculum_benchmark(train, test, ORDER, classes_per_experience=3)
    with pytest.raises(ValueError, match=r"classes \[11\] have no samples"):
        select_classes(train, [1, 11])


def test_fit_on_a_dataset_with_a_custom_teacher(digits_pair):
    train, _ = digits_pair
    cd = CurriculumDesigner(
        teacher=torch.nn.Flatten(), distance="euclidean", max_per_class=None
    ).fit(train, classes=[0, 3, 5])
    x = train.data.flatten(1).double().numpy()
    y = train.targets.numpy()
    protos = np.stack([x[y == c].mean(0) for c in (0, 3, 5)])
    want = np.linalg.norm(protos[:, None] - protos[None], axis=-1)
    assert cd.classes_ == [0, 3, 5]
    assert np.allclose(cd.distance_matrix.numpy(), want, atol=1e-6)


def test_metric_on_the_online_stream_indexes_rows_by_origin_experience(digits_pair):
    train, test = digits_pair
    order = [2, 9, 4]
    bm = curriculum_benchmark(
        select_classes(train, order),
        select_classes(test, order),
        order,
        online=True,
        experience_size=16,
    )
    metric, strat = _linear_naive_with_f(train_epochs=1)
    acc = np.full((3, 3), np.nan)
    for sub in bm.train_stream:
        strat.train(sub)
        if sub.is_last_subexp:  # the workaround makes this fire once per class
            t = sub.origin_experience.current_experience
            res = strat.eval(bm.test_stream)
            acc[t] = [
                res[f"Top1_Acc_Exp/eval_phase/test_stream/Task000/Exp{j:03d}"] for j in range(3)
            ]
    assert not np.isnan(acc).any()
    assert np.allclose(metric.accuracy_matrix("test"), acc)
    alpha, beta, f = curriculum_effectiveness(acc)
    assert res["CurriculumF/eval_phase/test_stream"] == pytest.approx(f)
    assert res["CurriculumAlpha/eval_phase/test_stream"] == pytest.approx(alpha)
    assert res["CurriculumBeta/eval_phase/test_stream"] == pytest.approx(beta)
