"""Figures of an accuracy matrix, the matrix of an Avalanche run, plots and exports."""

import csv
import json
import math
import warnings

import numpy as np
import pytest
import torch
from avalanche.benchmarks import nc_benchmark
from avalanche.evaluation.metrics import AccuracyMatrixPluginMetric, accuracy_metrics
from avalanche.training.plugins import EvaluationPlugin
from avalanche.training.supervised import Naive
from PIL import Image

from neve.benchmarks import digits
from neve.benchmarks.results import (
    accuracy_matrix_of,
    average_forgetting,
    average_incremental_accuracy,
    backward_transfer,
    curves_figure,
    export_results,
    forgetting_per_experience,
    heatmap_image,
    last_accuracy,
    log_accuracy_heatmap,
    mean_and_spread,
    results_table,
    run_seeds,
    save_accuracy_curves,
    save_accuracy_heatmap,
    seen_accuracies,
    summary,
)
from neve.plugins import CurriculumEffectiveness, curriculum_effectiveness

NAN = math.nan
# R[i, j]: accuracy on experience j after training 0..i; experience 0 rises after step 0
HAND = np.array([[0.90, NAN, NAN],
                 [0.95, 0.80, NAN],
                 [0.50, 0.70, 0.90]])
SIZES = [100, 50, 50]


# ----------------------------------------------------------- each figure, by hand
def test_last_accuracy_by_hand():
    assert last_accuracy(HAND) == pytest.approx((0.5 + 0.7 + 0.9) / 3)
    assert last_accuracy(HAND, SIZES) == pytest.approx((50 + 35 + 45) / 200)


def test_seen_and_average_incremental_accuracy_by_hand():
    assert seen_accuracies(HAND) == pytest.approx([0.9, (0.95 + 0.8) / 2, 0.7])
    assert average_incremental_accuracy(HAND) == pytest.approx((0.9 + 0.875 + 0.7) / 3)
    weighted = [0.9, (95 + 40) / 150, (50 + 35 + 45) / 200]
    assert seen_accuracies(HAND, SIZES) == pytest.approx(weighted)
    assert average_incremental_accuracy(HAND, SIZES) == pytest.approx(sum(weighted) / 3)


def test_forgetting_by_hand_max_and_first_reference():
    # max: best before the last step (0.95 at step 1) minus the last
    assert forgetting_per_experience(HAND) == pytest.approx([0.95 - 0.5, 0.8 - 0.7, 0.0])
    assert average_forgetting(HAND) == pytest.approx((0.45 + 0.1) / 2)
    # first: right after learning it (0.90 at step 0) minus the last
    assert forgetting_per_experience(HAND, "first") == pytest.approx([0.4, 0.1, 0.0])
    assert average_forgetting(HAND, "first") == pytest.approx(0.25)


def test_backward_transfer_by_hand():
    assert backward_transfer(HAND) == pytest.approx(((0.5 - 0.9) + (0.7 - 0.8)) / 2)


def test_curriculum_f_reads_the_same_figures():
    alpha, beta, f = curriculum_effectiveness(HAND)
    assert alpha == pytest.approx(0.7) == pytest.approx(last_accuracy(HAND))
    assert beta == pytest.approx(0.4) == pytest.approx(forgetting_per_experience(HAND, "first")[0])
    assert f == pytest.approx(2 * 0.7 / (0.4 * 0.7 + 1))


def test_one_step_has_no_forgetting_nor_backward_transfer():
    one = np.array([[0.8, NAN]])
    assert last_accuracy(one) == pytest.approx(0.8)
    assert math.isnan(average_forgetting(one)) and math.isnan(backward_transfer(one))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_figures_match_a_loop_straight_from_the_papers(seed):
    rng = np.random.default_rng(seed)
    t = 6
    acc = rng.uniform(size=(t, t))
    acc[np.triu_indices(t, 1)] = NAN
    sizes = rng.integers(10, 100, size=t)
    f_max = [max(acc[k, j] for k in range(j, t - 1)) - acc[t - 1, j] for j in range(t - 1)]
    bwt = sum(acc[t - 1, j] - acc[j, j] for j in range(t - 1)) / (t - 1)
    inc = sum(sum(acc[i, j] * sizes[j] for j in range(i + 1)) / sum(sizes[: i + 1])
              for i in range(t)) / t
    assert forgetting_per_experience(acc)[: t - 1] == pytest.approx(f_max)
    assert average_forgetting(acc) == pytest.approx(sum(f_max) / (t - 1))
    assert backward_transfer(acc) == pytest.approx(bwt)
    assert average_incremental_accuracy(acc, sizes) == pytest.approx(inc)
    assert last_accuracy(acc) == pytest.approx(acc[-1].mean())


def test_percentages_are_refused_naming_the_fix():
    with pytest.raises(ValueError, match="divide percentages by 100"):
        results_table(100 * HAND)


# ------------------------------------------------------ the matrix of an Avalanche run
def test_matrix_from_hand_written_results():
    key = "Top1_Acc_Exp/eval_phase/test_stream/Task000/Exp{:03d}"
    results = [{key.format(0): 0.9, "Top1_Acc_Stream/eval_phase/test_stream/Task000": 0.3},
               {key.format(0): 0.6, key.format(1): 0.8,
                "Top1_Acc_Exp/eval_phase/train_stream/Task000/Exp000": 1.0}]
    expected = np.array([[0.9, NAN], [0.6, 0.8]])
    np.testing.assert_array_equal(accuracy_matrix_of(results), expected)
    history = {key.format(0): ([10, 20], [0.9, 0.6]), key.format(1): ([20], [0.8])}
    np.testing.assert_array_equal(accuracy_matrix_of(history), expected)
    with pytest.raises(ValueError, match="no per-experience accuracy"):
        accuracy_matrix_of(results, stream="valid")
    with pytest.raises(TypeError, match="source must be"):
        accuracy_matrix_of(3)


@pytest.fixture(scope="module")
def bm():
    train, test = digits(seed=0)
    return nc_benchmark(train, test, n_experiences=5, task_labels=False, seed=0)


def naive(seed=0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        evaluator = EvaluationPlugin(accuracy_metrics(experience=True),
                                     AccuracyMatrixPluginMetric(), CurriculumEffectiveness(),
                                     loggers=[])
    return Naive(model, torch.optim.SGD(model.parameters(), lr=0.05),
                 torch.nn.CrossEntropyLoss(), train_mb_size=32, train_epochs=1,
                 eval_mb_size=256, evaluator=evaluator)


def test_every_source_of_a_run_gives_the_same_matrix(bm):
    strategy, results = naive(), []
    for exp in bm.train_stream:
        strategy.train(exp)
        results.append(strategy.eval(bm.test_stream))
    acc = accuracy_matrix_of(results)
    assert acc.shape == (5, 5) and not np.isnan(acc).any()
    ev = strategy.evaluator
    np.testing.assert_array_equal(accuracy_matrix_of(ev.get_all_metrics()), acc)
    np.testing.assert_array_equal(accuracy_matrix_of(ev.metrics[-1]), acc)  # neve's metric
    np.testing.assert_allclose(accuracy_matrix_of(ev.metrics[-2]), acc, atol=1e-6)
    np.testing.assert_allclose(accuracy_matrix_of(ev), acc, atol=1e-6)


def test_run_seeds_reports_mean_and_spread_of_each_figure(bm):
    out = run_seeds(naive, bm, [0, 1, 0])
    matrices = [np.array(m, dtype=float) for m in out["matrices"]]
    np.testing.assert_array_equal(matrices[0], matrices[2])  # same seed, same numbers
    assert not np.array_equal(matrices[0], matrices[1])
    for name in ("last_accuracy", "average_incremental_accuracy", "average_forgetting",
                 "backward_transfer"):
        values = [summary(m)[name] for m in matrices]
        assert out["figures"][name]["per_seed"] == pytest.approx(values)
        assert out["figures"][name]["mean"] == pytest.approx(np.mean(values))
        assert out["figures"][name]["std"] == pytest.approx(np.std(values))


def test_mean_and_spread_leaves_unmeasured_values_out():
    out = mean_and_spread([{"a": 0.2, "b": None}, {"a": 0.4, "b": 0.5}], ddof=1)
    assert out["a"]["mean"] == pytest.approx(0.3)
    assert out["a"]["std"] == pytest.approx(np.std([0.2, 0.4], ddof=1))
    assert out["b"] == {"mean": 0.5, "std": None, "per_seed": [None, 0.5]}


# ----------------------------------------------------------------- plots and exports
def test_heatmap_and_curves_are_written_as_png_and_svg(tmp_path):
    paths = save_accuracy_heatmap(HAND, tmp_path / "out" / "heatmap", labels=["a", "b", "c"])
    with Image.open(paths["png"]) as image:
        image.load()
        assert image.size == (round(100 * (1.6 + 0.75 * 3)), round(100 * (1.2 + 0.6 * 3)))
    svg = paths["svg"].read_text()
    assert svg.startswith("<?xml") and "</svg>" in svg
    runs = {"naive": [HAND, np.clip(HAND - 0.1, 0, 1)], "other": [HAND]}
    curves = save_accuracy_curves(runs, tmp_path / "curves")
    with Image.open(curves["png"]) as image:
        assert image.size == (round(100 * 4.2 * 2), 340)
    assert curves["svg"].stat().st_size > 1000


def test_seen_so_far_curve_is_the_exported_figure():
    # the black curve is seen_accuracies with the same test sizes as the JSON's figure
    fig = curves_figure({"run": [HAND]}, sizes=SIZES)
    (seen,) = [line for line in fig.axes[0].lines if line.get_label() == "seen so far"]
    assert seen.get_ydata() == pytest.approx(100 * seen_accuracies(HAND, SIZES))
    assert seen.get_ydata() != pytest.approx(100 * seen_accuracies(HAND))
    with pytest.raises(ValueError, match="sizes"):
        curves_figure({"run": [HAND]}, sizes=[1, 2])
    with pytest.raises(ValueError, match="sizes must be 3 positive"):
        results_table(HAND, sizes=[100, 0, 50])


def test_heatmap_is_logged_to_tensorboard_as_an_image(tmp_path):
    from avalanche.logging import TensorboardLogger
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logger = TensorboardLogger(tb_log_dir=tmp_path)
    log_accuracy_heatmap(logger, HAND, step=7)
    logger.writer.flush()
    events = EventAccumulator(str(tmp_path))
    events.Reload()
    assert events.Tags()["images"] == ["AccuracyMatrix/heatmap"]
    (image,) = events.Images("AccuracyMatrix/heatmap")
    assert image.step == 7 and (image.width, image.height) == heatmap_image(HAND).size


def test_export_writes_json_and_csv_in_one_call(tmp_path):
    paths = export_results(HAND, tmp_path / "run", sizes=SIZES)
    data = json.loads(paths["json"].read_text())
    assert data["accuracy_matrix"][0] == [0.9, None, None]
    assert data["last_accuracy"] == pytest.approx(0.65)
    assert data["backward_transfer"] == pytest.approx(-0.25)
    with paths["matrix_csv"].open() as file:
        rows = list(csv.reader(file))
    assert rows[0] == ["after", "exp0", "exp1", "exp2", "seen_accuracy"]
    assert rows[2][:3] == ["exp1", "0.95", "0.8"] and rows[1][2] == ""
    with paths["figures_csv"].open() as file:
        figures = dict(list(csv.reader(file))[1:])
    assert float(figures["average_forgetting"]) == pytest.approx(0.275)
