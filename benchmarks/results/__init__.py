"""Results of a continual-learning run: its accuracy matrix, figures, plots and exports.

The figures themselves are pure functions in :mod:`neve.models.accuracy_matrix`
(re-exported here); this package reads the matrix from an Avalanche run
(:func:`accuracy_matrix_of`), draws it (:func:`save_accuracy_heatmap`,
:func:`save_accuracy_curves`, :func:`log_accuracy_heatmap` for TensorBoard),
writes it (:func:`export_results`) and repeats a run over seeds (:func:`run_seeds`).
"""

from ...models.accuracy_matrix import (
    average_forgetting,
    average_incremental_accuracy,
    backward_transfer,
    forgetting_per_experience,
    last_accuracy,
    seen_accuracies,
    summary,
)
from .export import export_results, mean_and_spread, results_table, run_seeds
from .matrix import accuracy_matrix_of
from .plots import (
    curves_figure,
    heatmap_image,
    log_accuracy_heatmap,
    save_accuracy_curves,
    save_accuracy_heatmap,
)

__all__ = [
    "accuracy_matrix_of",
    "average_forgetting",
    "average_incremental_accuracy",
    "backward_transfer",
    "curves_figure",
    "export_results",
    "forgetting_per_experience",
    "heatmap_image",
    "last_accuracy",
    "log_accuracy_heatmap",
    "mean_and_spread",
    "results_table",
    "run_seeds",
    "save_accuracy_curves",
    "save_accuracy_heatmap",
    "seen_accuracies",
    "summary",
]
