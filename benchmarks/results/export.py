"""A run's accuracy matrix and figures as JSON and CSV, and their mean and spread over seeds."""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
from avalanche.training.determinism.rng_manager import RNGManager

from ...models.accuracy_matrix import check_accuracy_matrix, check_test_sizes, summary
from ...models.core.checks import Function, check_seed, validated
from .matrix import accuracy_matrix_of

__all__ = ["export_results", "mean_and_spread", "results_table", "run_seeds"]

#: The figures of :func:`neve.models.accuracy_matrix.summary` that are one number.
SCALAR_FIGURES = ("last_accuracy", "average_incremental_accuracy", "average_forgetting",
                  "backward_transfer")


def _plain(value):
    """NaN as ``None`` (JSON has no NaN), numpy numbers as Python's, lists kept."""
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_plain(v) for v in value]
    value = float(value)
    return None if math.isnan(value) else value


def results_table(accuracy, sizes: Sequence[int] | None = None) -> dict:
    """``{"accuracy_matrix": rows, **figures}``: the matrix (NaN as ``None``) and every figure of
    :func:`neve.models.accuracy_matrix.summary`, weighted by ``sizes`` where it applies."""
    acc = check_accuracy_matrix(accuracy)
    figures = summary(acc, check_test_sizes(sizes, acc.shape[1]))
    return {"accuracy_matrix": _plain(acc), **{k: _plain(v) for k, v in figures.items()}}


def export_results(accuracy, path: str | os.PathLike, sizes: Sequence[int] | None = None,
                   labels: Sequence[str] | None = None) -> dict[str, Path]:
    """Write ``<path>.json`` (:func:`results_table`), ``<path>_matrix.csv`` (one row per
    training step: ``after``, one column per experience, ``seen_accuracy``) and
    ``<path>_figures.csv`` (``figure,value``); returns the paths by kind.

    ``labels`` name the experiences (default ``exp0, exp1, ...``); missing folders are made.
    """
    table = results_table(accuracy, sizes)
    acc = np.asarray(table["accuracy_matrix"], dtype=object)
    names = list(labels) if labels is not None else [f"exp{j}" for j in range(acc.shape[1])]
    if len(names) != acc.shape[1]:
        raise ValueError(f"labels must name the {acc.shape[1]} experiences, got {len(names)}")
    base = Path(path)
    base.parent.mkdir(parents=True, exist_ok=True)
    paths = {"json": base.with_name(base.name + ".json"),
             "matrix_csv": base.with_name(base.name + "_matrix.csv"),
             "figures_csv": base.with_name(base.name + "_figures.csv")}
    paths["json"].write_text(json.dumps({"experiences": names, **table}, indent=1) + "\n")
    with paths["matrix_csv"].open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["after", *names, "seen_accuracy"])
        for i, row in enumerate(table["accuracy_matrix"]):
            writer.writerow([names[i] if i < len(names) else f"step{i}",
                             *("" if a is None else a for a in row),
                             "" if table["seen_accuracies"][i] is None
                             else table["seen_accuracies"][i]])
    with paths["figures_csv"].open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["figure", "value"])
        for name in SCALAR_FIGURES:
            writer.writerow([name, "" if table[name] is None else table[name]])
    return paths


def mean_and_spread(per_seed: Sequence[Mapping[str, float]], ddof: int = 0) -> dict[str, dict]:
    """``{figure: {"mean", "std", "per_seed"}}`` over the seeds' ``{figure: value}`` dicts.

    ``std`` is the standard deviation over seeds with ``ddof`` (0: population, as
    ``numpy.std``; 1: sample); NaN values are left out of both, and a figure no
    seed measured has ``None``.
    """
    out = {}
    for name in per_seed[0]:
        values = np.array([np.nan if s[name] is None else float(s[name]) for s in per_seed])
        kept = values[~np.isnan(values)]
        enough = kept.size > ddof
        out[name] = {"mean": float(kept.mean()) if kept.size else None,
                     "std": float(kept.std(ddof=ddof)) if enough else None,
                     "per_seed": _plain(values)}
    return out


@validated(make_strategy=Function())
def run_seeds(make_strategy: Callable[[int], object], benchmark, seeds: Iterable[int],
              stream: str = "test", on_step: Callable[[int, int, dict], None] | None = None
              ) -> dict:
    """Train a fresh ``make_strategy(seed)`` over ``benchmark`` per seed, evaluating
    ``benchmark.<stream>_stream`` after each training experience.

    Avalanche's generators are seeded with ``seed`` (``RNGManager.set_random_seeds``)
    before the strategy is made; its evaluator needs ``accuracy_metrics(experience=True)``.
    ``on_step(seed, step, results)`` sees each evaluation's results.

    Returns:
        A dict with ``"seeds"``, ``"matrices"`` (R per seed, as lists) and ``"figures"``
        (:func:`mean_and_spread` of the scalar figures).
    """
    seeds = [check_seed(s, "seeds") for s in seeds]
    if not seeds:
        raise ValueError("seeds must name at least one seed")
    eval_stream = getattr(benchmark, f"{stream}_stream")
    matrices, figures = [], []
    for seed in seeds:
        RNGManager.set_random_seeds(seed)
        strategy, results = make_strategy(seed), []
        for step, experience in enumerate(benchmark.train_stream):
            strategy.train(experience)
            results.append(strategy.eval(eval_stream))
            if on_step is not None:
                on_step(seed, step, results[-1])
        acc = accuracy_matrix_of(results, stream)
        matrices.append(acc)
        table = summary(acc)
        figures.append({k: table[k] for k in SCALAR_FIGURES})
    return {"seeds": seeds, "matrices": [_plain(m) for m in matrices],
            "figures": mean_and_spread(figures)}
