"""Heatmap of a class order's normalised prototype distances (Curriculum Designer figure).

Drawn with a bare matplotlib ``Figure`` (no pyplot: no GUI backend needed).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure


def save_distance_heatmap(
    matrix: np.ndarray, ticks: Sequence[str], title: str, path: str | os.PathLike
) -> None:
    """Save ``matrix`` (``[n, n]``, rows and columns labelled ``ticks``) as an image at ``path``.

    The format follows the suffix of ``path`` (e.g. ``.png``); missing folders are made.
    """
    n = len(ticks)
    fig = Figure(figsize=(1.0 + 0.5 * n, 0.8 + 0.5 * n))
    ax = fig.add_subplot()
    im = ax.imshow(matrix, cmap="viridis")
    ax.set_xticks(range(n), ticks, rotation=90)
    ax.set_yticks(range(n), ticks)
    ax.set_title(title)
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
