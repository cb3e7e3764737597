"""Figures of accuracy matrices: a heatmap, per-experience curves over seeds, TensorBoard.

Drawn on bare matplotlib ``Figure`` s with the Agg canvas (no pyplot, no GUI).
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

from ...models.accuracy_matrix import check_accuracy_matrix, check_test_sizes, seen_accuracies

__all__ = ["curves_figure", "heatmap_image", "log_accuracy_heatmap", "save_accuracy_curves",
           "save_accuracy_heatmap"]

SUFFIXES = (".png", ".svg")


def _labels(n: int, labels: Sequence[str] | None) -> list[str]:
    names = [f"exp{j}" for j in range(n)] if labels is None else [str(x) for x in labels]
    if len(names) < n:
        raise ValueError(f"labels must name the {n} experiences, got {len(names)}")
    return names[:n]


def _save(fig: Figure, path: str | os.PathLike) -> dict[str, Path]:
    """``fig`` as ``<path>.png`` and ``<path>.svg`` (folders made); the paths by suffix."""
    base = Path(path)
    base.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    out = {s[1:]: base.with_name(base.name + s) for s in SUFFIXES}
    for target in out.values():
        fig.savefig(target, dpi=100)
    return out


def heatmap_figure(accuracy, labels: Sequence[str] | None = None,
                   title: str = "accuracy (%)") -> Figure:
    """The ``[T, E]`` matrix as a heatmap: rows = after training step ``i``, columns =
    experience ``j``, in order; each measured cell annotated in percent; a colour bar."""
    acc = check_accuracy_matrix(accuracy)
    t, e = acc.shape
    cols, rows = _labels(e, labels), _labels(t, labels if labels is not None and
                                             len(labels) >= t else None)
    fig = Figure(figsize=(1.6 + 0.75 * e, 1.2 + 0.6 * t))
    ax = fig.add_subplot()
    image = ax.imshow(100 * np.ma.masked_invalid(acc), cmap="viridis", vmin=0, vmax=100,
                      aspect="auto")
    ax.set_xticks(range(e), cols, rotation=45 if max(map(len, cols)) > 4 else 0)
    ax.set_yticks(range(t), [f"after {r}" for r in rows])
    ax.set_xlabel("evaluated on")
    ax.set_ylabel("trained up to")
    ax.set_title(title)
    for i in range(t):
        for j in range(e):
            if not np.isnan(acc[i, j]):
                ax.text(j, i, f"{100 * acc[i, j]:.1f}", ha="center", va="center", fontsize=8,
                        color="black" if acc[i, j] > 0.6 else "white")
    fig.colorbar(image, ax=ax, label="accuracy (%)")
    fig.tight_layout()
    return fig


def save_accuracy_heatmap(accuracy, path: str | os.PathLike,
                          labels: Sequence[str] | None = None,
                          title: str = "accuracy (%)") -> dict[str, Path]:
    """:func:`heatmap_figure` saved as ``<path>.png`` and ``<path>.svg``; returns both paths."""
    return _save(heatmap_figure(accuracy, labels, title), path)


def _band(ax, x: np.ndarray, runs: np.ndarray, label: str, **style) -> None:
    """Mean over ``runs`` (``[seeds, len(x)]``, NaN ignored) with a mean +- std band."""
    mean, std = np.nanmean(runs, axis=0), np.nanstd(runs, axis=0)
    line, = ax.plot(x, 100 * mean, marker="o", label=label, **style)
    if runs.shape[0] > 1:
        ax.fill_between(x, 100 * (mean - std), 100 * (mean + std), alpha=0.2,
                        color=line.get_color())


def curves_figure(runs: Mapping[str, Sequence], labels: Sequence[str] | None = None,
                  sizes: Sequence[int] | None = None) -> Figure:
    """One panel per run name: the accuracy on each experience after each training step
    (from the step it was learned on) and on all experiences seen so far
    (:func:`~neve.models.accuracy_matrix.seen_accuracies`, weighted by the test ``sizes`` as
    :func:`~neve.benchmarks.results.export_results` weights it), as the mean over that run's
    seeds with a mean +- std band.

    ``runs`` maps a name (a method) to its seeds' ``[T, E]`` matrices, all of one shape.
    """
    if not runs:
        raise ValueError("runs must map at least one name to its seeds' accuracy matrices")
    stacks = {}
    for name, matrices in runs.items():
        stacks[name] = np.stack([check_accuracy_matrix(m, f"runs[{name!r}]") for m in matrices])
    t, e = next(iter(stacks.values())).shape[1:]
    names = _labels(e, labels)
    weights = check_test_sizes(sizes, e)
    fig = Figure(figsize=(4.2 * len(stacks), 3.4))
    axes = fig.subplots(1, len(stacks), squeeze=False, sharey=True)[0]
    steps = np.arange(t)
    for ax, (name, stack) in zip(axes, stacks.items(), strict=True):
        for j in range(min(t, e)):
            _band(ax, steps[j:], stack[:, j:, j], names[j], linewidth=1)
        seen = np.stack([seen_accuracies(m, weights) for m in stack])
        _band(ax, steps, seen, "seen so far", color="black", linewidth=2.5)
        ax.set_title(f"{name} ({stack.shape[0]} seed{'s' if stack.shape[0] > 1 else ''})")
        ax.set_xticks(steps, [f"{names[i] if i < e else i}" for i in steps])
        ax.set_xlabel("after training")
        ax.set_ylim(-2, 102)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("accuracy (%)")
    axes[-1].legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    return fig


def save_accuracy_curves(runs: Mapping[str, Sequence], path: str | os.PathLike,
                         labels: Sequence[str] | None = None,
                         sizes: Sequence[int] | None = None) -> dict[str, Path]:
    """:func:`curves_figure` saved as ``<path>.png`` and ``<path>.svg``; returns both paths."""
    return _save(curves_figure(runs, labels, sizes), path)


def heatmap_image(accuracy, labels: Sequence[str] | None = None,
                  title: str = "accuracy (%)") -> Image.Image:
    """:func:`heatmap_figure` as an RGB PIL image (what Avalanche's loggers take)."""
    fig = heatmap_figure(accuracy, labels, title)
    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    buffer.seek(0)
    return Image.open(buffer).convert("RGB")


def log_accuracy_heatmap(logger, accuracy, step: int, name: str = "AccuracyMatrix/heatmap",
                         labels: Sequence[str] | None = None) -> None:
    """Send the heatmap to an Avalanche logger as an image at x position ``step``.

    Avalanche's ``TensorboardLogger`` writes a PIL image as an image summary
    (``add_image``); ``logger`` is any object with its ``log_single_metric(name,
    value, x)``.
    """
    if not callable(getattr(logger, "log_single_metric", None)):
        raise TypeError(f"logger must be an Avalanche logger (log_single_metric), got {logger!r}")
    logger.log_single_metric(name, heatmap_image(accuracy, labels), int(step))
