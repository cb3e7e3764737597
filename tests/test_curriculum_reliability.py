"""Curriculum area, issues #11 and #12: F under periodic evaluation, subset orders, bad input."""

import math
import warnings

import numpy as np
import pytest
import torch
from avalanche.evaluation.metrics import accuracy_metrics
from avalanche.training.determinism.rng_manager import RNGManager
from avalanche.training.plugins import EvaluationPlugin
from avalanche.training.supervised import Naive
from bad_input import assert_refused

from neve.benchmarks import (
    CurriculumDesigner,
    curriculum_benchmark,
    select_classes,
    si_blurry_benchmark,
    si_blurry_split,
    split_online,
)
from neve.plugins import CurriculumEffectiveness, curriculum_effectiveness
from neve.plugins.curriculum_metrics import effectiveness_f

ACC = "Top1_Acc_Exp/eval_phase/test_stream/Task000/Exp{:03d}"
F_KEYS = [f"Curriculum{k}/eval_phase/test_stream" for k in ("Alpha", "Beta", "F")]


@pytest.fixture(scope="module")
def digits_pair():
    from neve.benchmarks import digits

    return digits(seed=0)


@pytest.fixture(scope="module")
def three_class_bm(digits_pair):
    train, test = digits_pair
    return curriculum_benchmark(train, test, [6, 1, 4])


def _naive(metric, *, train_epochs, eval_every, peval_mode="epoch"):
    RNGManager.set_random_seeds(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    return Naive(
        model=model,
        optimizer=torch.optim.Adam(model.parameters(), lr=1e-2),
        criterion=torch.nn.CrossEntropyLoss(),
        train_mb_size=16,
        train_epochs=train_epochs,
        eval_every=eval_every,
        peval_mode=peval_mode,
        evaluator=EvaluationPlugin(accuracy_metrics(experience=True), metric, loggers=[]),
    )


# ----------------------------------------------------------------------------- #11.2
@pytest.mark.parametrize("eval_every", [0, 1, 2])
def test_f_is_the_same_whatever_the_periodic_evaluation(three_class_bm, eval_every):
    """Periodic evaluations inside an experience do not count; only the one after it.

    The reference is the run without periodic evaluation (``eval_every=-1``, an
    explicit ``eval`` after each experience); training is unshuffled so that the
    evaluations' draws from the global RNG do not change the model.
    """
    bm = three_class_bm
    ref_metric = CurriculumEffectiveness()
    ref = _naive(ref_metric, train_epochs=2, eval_every=-1)
    acc = np.full((3, 3), np.nan)
    for t, exp in enumerate(bm.train_stream):
        ref.train(exp, shuffle=False)
        res = ref.eval(bm.test_stream)
        acc[t] = [res[ACC.format(j)] for j in range(3)]
    want = curriculum_effectiveness(acc)
    assert want[1] > 0.5  # experience 0 is forgotten: beta is far from 0

    metric = CurriculumEffectiveness()
    strat = _naive(metric, train_epochs=2, eval_every=eval_every)
    for exp in bm.train_stream:
        res = strat.train(exp, eval_streams=[bm.test_stream], shuffle=False)
    got = [res[k] for k in F_KEYS]
    assert got == pytest.approx(list(want), abs=1e-12)
    assert np.allclose(metric.accuracy_matrix("test"), acc, atol=1e-12)


def test_periodic_evaluation_by_iteration_does_not_count(three_class_bm):
    bm = three_class_bm
    ref_metric = CurriculumEffectiveness()
    ref = _naive(ref_metric, train_epochs=1, eval_every=-1)
    for exp in bm.train_stream:
        ref.train(exp, shuffle=False)
        ref.eval(bm.test_stream)
    metric = CurriculumEffectiveness()
    # every 5 iterations, and at the end of each experience
    strat = _naive(metric, train_epochs=1, eval_every=5, peval_mode="iteration")
    for exp in bm.train_stream:
        strat.train(exp, eval_streams=[bm.test_stream], shuffle=False)
    assert np.allclose(metric.accuracy_matrix("test"), ref_metric.accuracy_matrix("test"))
    assert metric.first_after_learning == pytest.approx(ref_metric.first_after_learning)


# ----------------------------------------------------------------------------- #12.12
def test_skipped_evaluation_after_the_first_experience_warns_once(three_class_bm):
    bm = three_class_bm
    metric = CurriculumEffectiveness()
    strat = _naive(metric, train_epochs=1, eval_every=-1)
    strat.train(bm.train_stream[0])
    strat.train(bm.train_stream[1])  # no evaluation after experience 0
    with pytest.warns(UserWarning, match="after training experience 0"):
        res = strat.eval(bm.test_stream)
    assert not any(k in res for k in F_KEYS[1:])  # no beta, no F (not NaN)
    strat.train(bm.train_stream[2])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once: no second warning
        res = strat.eval(bm.test_stream)
    assert not any(k in res for k in F_KEYS[1:])


# ----------------------------------------------------------------------------- #11.11
@pytest.mark.parametrize("online", [False, True])
def test_a_subset_order_builds_the_benchmark_over_those_classes(digits_pair, online):
    train, test = digits_pair
    order = [3, 7, 1]
    bm = curriculum_benchmark(train, test, order, online=online, experience_size=40)
    t_train = torch.as_tensor(train.targets)
    t_test = torch.as_tensor(test.targets)
    # test stream: experience i holds exactly the test items of order[i]
    assert len(bm.test_stream) == 3
    for c, exp in zip(order, bm.test_stream, strict=True):
        assert list(exp.classes_in_this_experience) == [c]
        assert torch.as_tensor(list(exp.dataset.targets)).tolist() == [c] * int((t_test == c).sum())
    # train stream: each class's items exactly once, in order
    if online:
        subs = list(bm.train_stream)
        origins = [s.origin_experience.current_experience for s in subs]
        assert origins == sorted(origins) and set(origins) == {0, 1, 2}
        got = [torch.as_tensor(list(s.dataset.targets)) for s in subs]
        for s, y in zip(subs, got, strict=True):
            assert set(y.tolist()) == {order[s.origin_experience.current_experience]}
        y = torch.cat(got)
    else:
        assert [list(e.classes_in_this_experience) for e in bm.train_stream] == [[3], [7], [1]]
        y = torch.cat([torch.as_tensor(list(e.dataset.targets)) for e in bm.train_stream])
    want = torch.cat([torch.full((int((t_train == c).sum()),), c) for c in order])
    assert torch.equal(y, want)
    # same as selecting the classes first
    sel = curriculum_benchmark(
        select_classes(train, order), select_classes(test, order), order,
        online=online, experience_size=40,
    )
    for a, b in zip(bm.train_stream, sel.train_stream, strict=True):
        assert torch.equal(
            torch.as_tensor(list(a.dataset.targets)), torch.as_tensor(list(b.dataset.targets))
        )


# ----------------------------------------------------------------------------- #12.4
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_fit_features_refuses_non_finite_features(bad):
    feats = torch.randn(30, 4, generator=torch.Generator().manual_seed(0)) + 1
    targets = torch.arange(3).repeat(10)
    cd = CurriculumDesigner(max_per_class=None).fit_features(feats, targets)
    broken = feats.clone()
    broken[7, 2] = bad
    assert_refused(lambda: cd.fit_features(broken, targets), "features", state=cd.state_dict)
    fresh = CurriculumDesigner()
    assert_refused(lambda: fresh.fit_features(broken, targets), "features", fresh.state_dict)
    assert not hasattr(fresh, "distances_")


# ----------------------------------------------------------------------------- #12.13/14
def test_effectiveness_f_ranges_and_edges():
    assert effectiveness_f(0.5, 0.2) == pytest.approx(2 * 0.5 / (0.1 + 1))
    assert effectiveness_f(1.0, -1.0) == math.inf  # F's limit where beta * alpha = -1
    assert effectiveness_f(0.0, 1.0) == 0.0
    for alpha, beta, name in [
        (2, -3, "alpha"), (-1, 1, "alpha"), (1.5, 0, "alpha"), (math.nan, 0, "alpha"),
        (0.5, -3, "beta"), (0.5, 1.01, "beta"), (0.5, math.nan, "beta"),
        ("0.5", 0.1, "alpha"), (0.5, None, "beta"), (True, 0.1, "alpha"),
    ]:
        assert_refused(lambda a=alpha, b=beta: effectiveness_f(a, b), name)


def test_accuracy_matrix_must_be_in_unit_range():
    percent = np.array([[90.0, np.nan], [60.0, 80.0]])
    assert_refused(lambda: curriculum_effectiveness(percent), "accuracy")
    assert_refused(lambda: curriculum_effectiveness(np.array([[0.5, -0.1]])), "accuracy")
    assert_refused(lambda: curriculum_effectiveness(np.array([[0.5, np.inf]])), "accuracy")
    assert_refused(lambda: curriculum_effectiveness([["a", "b"]]), "accuracy")


def _fitted():
    feats = torch.randn(40, 5, generator=torch.Generator().manual_seed(0)) + 1
    return CurriculumDesigner(max_per_class=None).fit_features(feats, torch.arange(4).repeat(10))


def _designer_cases():
    feats = torch.randn(40, 5, generator=torch.Generator().manual_seed(1)) + 1
    y = torch.arange(4).repeat(10)
    return [
        # constructor
        ("ctor distance", lambda cd: CurriculumDesigner(distance="manhattan"), "distance"),
        ("ctor distance type", lambda cd: CurriculumDesigner(distance=3), "distance"),
        ("ctor max 0", lambda cd: CurriculumDesigner(max_per_class=0), "max_per_class"),
        ("ctor max str", lambda cd: CurriculumDesigner(max_per_class="5"), "max_per_class"),
        ("ctor max float", lambda cd: CurriculumDesigner(max_per_class=2.5), "max_per_class"),
        ("ctor seed str", lambda cd: CurriculumDesigner(seed="x"), "seed"),
        ("ctor seed neg", lambda cd: CurriculumDesigner(seed=-1), "seed"),
        ("ctor seed float", lambda cd: CurriculumDesigner(seed=1.5), "seed"),
        ("ctor teacher", lambda cd: CurriculumDesigner(teacher="resnet"), "teacher"),
        # fitting
        ("fit nan", lambda cd: cd.fit_features(feats.masked_fill(feats > 2.5, math.nan), y),
         "features"),
        ("fit 1-d", lambda cd: cd.fit_features(feats[:, 0], y), "features"),
        ("fit rows", lambda cd: cd.fit_features(feats[:-1], y), "targets"),
        ("fit float targets", lambda cd: cd.fit_features(feats, y + 0.5), "targets"),
        ("fit str feats", lambda cd: cd.fit_features("abc", y), "features"),
        ("fit classes str", lambda cd: cd.fit_features(feats, y, classes="01"), "classes"),
        ("fit classes float", lambda cd: cd.fit_features(feats, y, classes=[0, 1.5]), "classes"),
        ("fit classes absent", lambda cd: cd.fit_features(feats, y, classes=[0, 9]), "classes"),
        ("fit dataset", lambda cd: cd.fit([1, 2, 3]), "dataset"),
        # querying
        ("rank top_k 0", lambda cd: cd.rank(top_k=0), "top_k"),
        ("rank top_k str", lambda cd: cd.rank(top_k="x"), "top_k"),
        ("rank top_k float", lambda cd: cd.rank(top_k=2.5), "top_k"),
        ("rank search", lambda cd: cd.rank(search="greedy"), "search"),
        ("rank beam 0", lambda cd: cd.rank(search="beam", beam_width=0), "beam_width"),
        ("rank beam str", lambda cd: cd.rank(search="beam", beam_width="8"), "beam_width"),
        ("rank classes", lambda cd: cd.rank(classes=[0, 7]), "classes"),
        ("rank return_scores", lambda cd: cd.rank(return_scores="yes"), "return_scores"),
        ("score order", lambda cd: cd.score([0, 0, 1]), "order"),
        ("score order float", lambda cd: cd.score([0, 1.5, 2]), "order"),
        ("score order str", lambda cd: cd.score("012"), "order"),
        ("best_order classes", lambda cd: cd.best_order(classes=[1]), "classes"),
        ("normalized classes", lambda cd: cd.normalized_distances([0, 9]), "classes"),
        ("plot order", lambda cd: cd.plot("x.png", order=[0, 9]), "order"),
        ("plot names", lambda cd: cd.plot("x.png", class_names=["a", "b"]), "class_names"),
        # loading a state: checked whole before anything changes
        ("load list", lambda cd: cd.load_state_dict([1]), "state"),
        ("load distance", lambda cd: cd.load_state_dict(_state(distance="l1")), "distance"),
        ("load seed", lambda cd: cd.load_state_dict(_state(seed="x")), "seed"),
        ("load max", lambda cd: cd.load_state_dict(_state(max_per_class=0)), "max_per_class"),
        ("load shapes", lambda cd: cd.load_state_dict(_state(classes=torch.arange(3))),
         "classes"),
        ("load nan", lambda cd: cd.load_state_dict(
            _state(distances=torch.full((4, 4), math.nan, dtype=torch.float64))), "distances"),
    ]


def _state(**change):
    """A designer state (of other classes and seed than :func:`_fitted`'s) with ``change``."""
    feats = torch.randn(40, 3, generator=torch.Generator().manual_seed(2)) + 1
    other = CurriculumDesigner(distance="euclidean", seed=5, max_per_class=None)
    state = other.fit_features(feats, torch.arange(4).repeat(10) + 10).state_dict()
    return {**state, **change}


def test_designer_plot_writes_an_image(tmp_path):
    cd = _fitted()
    cd.plot(tmp_path / "d.png", order=[2, 0, 3, 1], class_names="abcd")
    assert (tmp_path / "d.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_designer_loads_a_valid_state_of_other_classes():
    cd = _fitted()
    cd.load_state_dict(_state())
    assert cd.classes_ == [10, 11, 12, 13] and cd.seed == 5 and cd.distance == "euclidean"


@pytest.mark.parametrize(
    "name,call,argument", _designer_cases(), ids=[c[0] for c in _designer_cases()]
)
def test_designer_bad_input_table(name, call, argument):
    cd = _fitted()
    assert_refused(lambda: call(cd), argument, state=cd.state_dict)


def test_metric_bad_input_table():
    metric = CurriculumEffectiveness()
    metric.load_state_dict(
        {"trained_upto": 1, "first_after_learning": {"test": 0.9}, "rows": {"test": {0: {0: 0.9}}}}
    )
    state = metric.state_dict
    for bad, argument in [
        ({"trained_upto": 0}, "state"),  # keys missing
        ({"trained_upto": "x", "first_after_learning": {}, "rows": {}}, "trained_upto"),
        ({"trained_upto": 0, "first_after_learning": {"test": 2.0}, "rows": {}},
         "first_after_learning"),
        ({"trained_upto": 0, "first_after_learning": {}, "rows": {"test": {0: {0: -1.0}}}},
         "rows"),
        ([1, 2], "state"),
    ]:
        assert_refused(lambda b=bad: metric.load_state_dict(b), argument, state=state)
    assert_refused(lambda: metric.accuracy_matrix(3), "stream")


def _benchmark_cases(train, test):
    sub = select_classes(train, [0, 1])
    targets = torch.as_tensor(train.targets)
    return [
        ("order str", lambda: curriculum_benchmark(train, test, "317"), "order"),
        ("order float", lambda: curriculum_benchmark(train, test, [3, 7.5]), "order"),
        ("order absent", lambda: curriculum_benchmark(train, test, [3, 42]), "order"),
        ("order one", lambda: curriculum_benchmark(train, test, [3]), "order"),
        ("cpe 0", lambda: curriculum_benchmark(train, test, [3, 7], classes_per_experience=0),
         "classes_per_experience"),
        ("cpe str", lambda: curriculum_benchmark(train, test, [3, 7], classes_per_experience="1"),
         "classes_per_experience"),
        ("cpe not dividing",
         lambda: curriculum_benchmark(train, test, [3, 7, 1], classes_per_experience=2),
         "classes_per_experience"),
        ("exp size 0",
         lambda: curriculum_benchmark(train, test, [3, 7], online=True, experience_size=0),
         "experience_size"),
        ("exp size float",
         lambda: curriculum_benchmark(train, test, [3, 7], online=True, experience_size=2.5),
         "experience_size"),
        ("seed str", lambda: curriculum_benchmark(train, test, [3, 7], seed="x"), "seed"),
        ("seed neg", lambda: curriculum_benchmark(train, test, [3, 7], seed=-1), "seed"),
        ("online str", lambda: curriculum_benchmark(train, test, [3, 7], online="yes"), "online"),
        ("train no targets", lambda: curriculum_benchmark([1, 2], test, [3, 7]), "train"),
        ("test no targets", lambda: curriculum_benchmark(train, [1, 2], [3, 7]), "test"),
        ("select classes", lambda: select_classes(train, [1, 11]), "classes"),
        ("select classes str", lambda: select_classes(train, "12"), "classes"),
        ("select dataset", lambda: select_classes([1, 2], [1]), "dataset"),
        ("split size 0", lambda: split_online(sub_stream(sub, test), 0), "experience_size"),
        ("split size str", lambda: split_online(sub_stream(sub, test), "8"), "experience_size"),
        ("split seed", lambda: split_online(sub_stream(sub, test), 8, seed="x"), "seed"),
        ("split shuffle", lambda: split_online(sub_stream(sub, test), 8, shuffle=None),
         "shuffle"),
        ("split name", lambda: split_online(sub_stream(sub, test), 8, name=3), "name"),
        ("split boundaries",
         lambda: split_online(sub_stream(sub, test), 8, access_task_boundaries="no"),
         "access_task_boundaries"),
        ("blurry n_tasks 0", lambda: si_blurry_split(targets, n_tasks=0), "n_tasks"),
        ("blurry n_tasks 11", lambda: si_blurry_split(targets, n_tasks=11), "n_tasks"),
        ("blurry n_tasks str", lambda: si_blurry_split(targets, n_tasks="3"), "n_tasks"),
        ("blurry n_tasks float", lambda: si_blurry_split(targets, n_tasks=2.5), "n_tasks"),
        ("blurry disjoint 1.5", lambda: si_blurry_split(targets, disjoint_class_ratio=1.5),
         "disjoint_class_ratio"),
        ("blurry disjoint nan", lambda: si_blurry_split(targets, disjoint_class_ratio=math.nan),
         "disjoint_class_ratio"),
        ("blurry disjoint str", lambda: si_blurry_split(targets, disjoint_class_ratio="0.5"),
         "disjoint_class_ratio"),
        ("blurry sample -0.1", lambda: si_blurry_split(targets, blurry_sample_ratio=-0.1),
         "blurry_sample_ratio"),
        ("blurry seed", lambda: si_blurry_split(targets, seed="x"), "seed"),
        ("blurry seed neg", lambda: si_blurry_split(targets, seed=-1), "seed"),
        ("blurry targets 2-d", lambda: si_blurry_split(targets[None]), "targets"),
        ("blurry targets float", lambda: si_blurry_split(targets + 0.5), "targets"),
        ("blurry targets neg", lambda: si_blurry_split(targets - 1), "targets"),
        ("blurry bm train", lambda: si_blurry_benchmark([1, 2], test), "train"),
        ("blurry bm test", lambda: si_blurry_benchmark(train, [1, 2]), "test"),
        ("blurry bm size 0",
         lambda: si_blurry_benchmark(train, test, online=True, experience_size=0),
         "experience_size"),
        ("blurry bm online", lambda: si_blurry_benchmark(train, test, online=1), "online"),
        ("blurry bm n_tasks", lambda: si_blurry_benchmark(train, test, n_tasks=0), "n_tasks"),
        ("blurry bm ratio",
         lambda: si_blurry_benchmark(train, test, blurry_sample_ratio=2), "blurry_sample_ratio"),
        ("blurry bm boundaries",
         lambda: si_blurry_benchmark(train, test, online=True, access_task_boundaries=None),
         "access_task_boundaries"),
    ]


def sub_stream(sub, test):
    return curriculum_benchmark(sub, select_classes(test, [0, 1]), [0, 1]).train_stream


def test_benchmark_builders_bad_input_table(digits_pair):
    train, test = digits_pair
    for name, call, argument in _benchmark_cases(*digits_pair):
        try:
            assert_refused(call, argument)
        except BaseException as err:  # name the row
            raise AssertionError(f"row {name!r}: {err}") from err
