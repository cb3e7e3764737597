"""A quiet Avalanche logger: one progress bar per phase, on a terminal only.

Avalanche's ``InteractiveLogger`` draws a bar per epoch and per evaluated
experience and prints every metric; in a log file (CI, a batch job) its redraws
fill hundreds of lines. :class:`PhaseProgressLogger` draws one bar per training
experience and one per evaluation, to standard error and only when that is a
terminal, and prints nothing else, so scripts print their own results.
"""

from __future__ import annotations

import sys
from typing import TextIO

from avalanche.logging import BaseLogger
from tqdm.std import tqdm


class PhaseProgressLogger(BaseLogger):
    """One progress bar per training experience and per evaluation phase.

    Args:
        file: where the bars go (default ``sys.stderr``).
        enabled: True always draws, False never; None (default) draws only when
            ``file`` is a terminal.
    """

    supports_distributed = True

    def __init__(self, file: TextIO | None = None, enabled: bool | None = None) -> None:
        super().__init__()
        self.file = file
        self.enabled = enabled
        self._bars: dict[str, tqdm] = {}

    def _on(self) -> bool:
        if self.enabled is not None:
            return bool(self.enabled)
        stream = self.file or sys.stderr
        return bool(getattr(stream, "isatty", lambda: False)())

    def _open(self, phase: str, desc: str, total: int | None) -> None:
        self._close(phase)
        if self._on():
            self._bars[phase] = tqdm(
                total=total, desc=desc, file=self.file or sys.stderr, leave=False
            )

    def _close(self, phase: str) -> None:
        bar = self._bars.pop(phase, None)
        if bar is not None:
            bar.close()

    def _step(self, phase: str) -> None:
        if phase in self._bars:
            self._bars[phase].update(1)

    def before_training_exp(self, strategy, metric_values=None, **kwargs) -> None:
        loader = getattr(strategy, "dataloader", None)
        epochs = getattr(strategy, "train_epochs", 1) or 1
        try:
            total = len(loader) * int(epochs) if loader is not None else None
        except TypeError:
            total = None
        exp = getattr(strategy.experience, "current_experience", "")
        self._open("train", f"train exp {exp}", total)

    def after_training_iteration(self, strategy, metric_values=None, **kwargs) -> None:
        self._step("train")

    def after_training_exp(self, strategy, metric_values=None, **kwargs) -> None:
        self._close("train")

    def before_eval(self, strategy, metric_values=None, **kwargs) -> None:
        self._open("eval", "eval", None)

    def after_eval_exp(self, strategy, metric_values=None, **kwargs) -> None:
        self._step("eval")

    def after_eval(self, strategy, metric_values=None, **kwargs) -> None:
        self._close("eval")
