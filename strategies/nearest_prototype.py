"""NearestPrototype: class means on frozen features, a ProtoNet-like few-shot learner.

The prototype classifier of Kowadlo et al. (2022)'s instance test, on a frozen
backbone's features (episodes encoded by :func:`neve.benchmarks.encode_episodes`):
class sums and counts are accumulated without gradients
(:mod:`neve.models.prototypes`), and Avalanche's ``NCMClassifier`` predicts the
class whose mean is closest to the query (``scoring="euclidean"``), or
:class:`neve.models.prototypes.DotProductNCM` the class whose mean has the
largest dot product with it (``scoring="dot"``, the authors' ProtoNet score).

With ``scoring="euclidean"`` (or ``"dot"`` with ``normalize=True``) and one
support item per class, a query that is an exact copy of a support item is
nearest to its own mean by construction: clean instance-test accuracy is 1.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from avalanche.models import NCMClassifier
from avalanche.training.plugins import EvaluationPlugin

from ..models.core.checks import Bool, Device, Int, OneOf, validated
from ..models.core.data_checks import check_features, check_labels
from ..models.prototypes import (
    SCORINGS,
    DotProductNCM,
    add_class_sums,
    class_means,
    seen_class_scores,
)
from ..plugins.experience_data import experience_classes
from .closed_form import ClosedFormStrategy
from .episodic import episode_evaluator


class _WithClasses:
    """An experience seen through a view that adds ``classes_in_this_experience``."""

    def __init__(self, experience, classes: list[int]) -> None:
        self._experience = experience
        self.classes_in_this_experience = classes

    def __getattr__(self, name: str):
        return getattr(self._experience, name)


class NearestPrototype(ClosedFormStrategy):
    """Class means on (L2-normalised) features: a ProtoNet-like learner.

    Training adds each item's (normalised) feature to its class's running sum (no
    gradients, order-free, so it cannot forget); after each experience the means
    go into Avalanche's ``NCMClassifier``, which predicts the class whose mean is
    closest (Euclidean) to the (normalised) query, or, with ``scoring="dot"``, into
    :class:`~neve.models.prototypes.DotProductNCM`, which predicts the class whose
    mean has the largest dot product with it (the authors' ProtoNet score; use
    ``normalize=False`` for their unnormalised embeddings). State: ``class_sums`` ``[C, D]``
    and ``class_counts`` ``[C]`` (float64 tensors). The skeleton (one pass, refused
    plugins, exact shards, whole evaluation, all-or-nothing experiences) is
    :class:`~neve.strategies.closed_form.ClosedFormStrategy`'s: the sums of an
    experience grow apart (summed over the processes) and are added when it ends.

    During training, ``mb_output`` holds :func:`~neve.models.prototypes.seen_class_scores`
    of the mini-batch against the means after adding it (``-inf`` for classes not
    seen yet), so Avalanche's training metrics report the nearest-mean accuracy on
    the data seen; ``loss`` stays 0 (there is no loss).

    Args:
        num_classes: largest label + 1.
        feature_dim: size of the input features (inputs ``[n, feature_dim]``).
        normalize: L2-normalise features (and queries) first.
        scoring: "euclidean" (nearest mean, default) or "dot" (largest dot product).
        train_mb_size, eval_mb_size, device, plugins, evaluator, eval_every: as for
            Avalanche strategies (``evaluator`` default: :func:`episode_evaluator`).
        train_epochs: must be 1.

    Raises:
        ValueError: at :meth:`train`, for an experience with no items, labels
            outside ``[0, num_classes)``, inputs that are not ``[n, feature_dim]``
            or with NaN/inf (state unchanged).
    """

    checkpointed = ("num_classes", "feature_dim", "normalize", "scoring")

    @validated(num_classes=Int(1), feature_dim=Int(1), normalize=Bool(),
               scoring=OneOf(*SCORINGS), train_mb_size=Int(1), eval_mb_size=Int(1),
               eval_every=Int(-1), device=Device())
    def __init__(
        self,
        *,
        num_classes: int,
        feature_dim: int = 1280,
        normalize: bool = True,
        scoring: str = "euclidean",
        train_mb_size: int = 256,
        train_epochs: int = 1,
        eval_mb_size: int = 1024,
        device: str | torch.device = "cpu",
        plugins: Sequence | None = None,
        evaluator: EvaluationPlugin | None = None,
        eval_every: int = -1,
    ) -> None:
        model = (DotProductNCM if scoring == "dot" else NCMClassifier)(normalize=normalize)
        super().__init__(model=model, criterion=torch.nn.CrossEntropyLoss(),
                         train_mb_size=train_mb_size, train_epochs=train_epochs,
                         eval_mb_size=eval_mb_size, device=device, plugins=plugins,
                         evaluator=evaluator if evaluator is not None else episode_evaluator(),
                         eval_every=eval_every)
        self.normalize, self.scoring = normalize, scoring
        self.class_sums = torch.zeros(num_classes, feature_dim, dtype=torch.float64)
        self.class_counts = torch.zeros(num_classes, dtype=torch.float64)
        self._pending: tuple[torch.Tensor, torch.Tensor] | None = None

    @property
    def num_classes(self) -> int:
        return self.class_sums.shape[0]

    @property
    def feature_dim(self) -> int:
        return self.class_sums.shape[1]

    def state_dict(self) -> dict:
        return {"class_sums": self.class_sums, "class_counts": self.class_counts}

    def load_state_dict(self, state: dict) -> None:
        """Load a :meth:`state_dict`; refused (nothing changed) unless its shapes are this one's."""
        sums, counts = state["class_sums"], state["class_counts"]
        shape = (self.num_classes, self.feature_dim)
        if not (isinstance(sums, torch.Tensor) and isinstance(counts, torch.Tensor)
                and tuple(sums.shape) == shape and tuple(counts.shape) == shape[:1]):
            raise ValueError(f"state's class_sums / class_counts must be {list(shape)} / "
                             f"[{shape[0]}] (num_classes, feature_dim), got "
                             f"{getattr(sums, 'shape', sums)} / {getattr(counts, 'shape', counts)}")
        self.class_sums = sums.detach().to(torch.float64).clone()
        self.class_counts = counts.detach().to(torch.float64).clone()

    def check_experience(self, experience) -> None:
        """Refuse an empty experience or labels outside ``[0, num_classes)``, before training."""
        super().check_experience(experience)
        where = f"experiences: experience {getattr(experience, 'current_experience', '?')}"
        targets = check_labels(experience.dataset.targets, f"{where} targets")
        low, high = int(targets.min()), int(targets.max())
        if high >= self.num_classes:
            raise ValueError(f"{where} has labels in [{low}, {high}], outside "
                             f"[0, num_classes={self.num_classes})")

    @property
    def label_cap(self) -> tuple[int, str]:
        return self.num_classes, "num_classes"

    def model_adaptation(self, model=None):
        """Avalanche's adaptation; an experience without a class timeline (e.g. from
        ``benchmark_from_datasets``) gets its classes from its targets, which
        ``NCMClassifier`` reads."""
        experience = self.experience
        if experience is not None and not hasattr(experience, "classes_in_this_experience"):
            self.experience = _WithClasses(experience, experience_classes(experience))
            try:
                return super().model_adaptation(model)
            finally:
                self.experience = experience
        return super().model_adaptation(model)

    def before_absorbing(self) -> None:
        self._pending = (torch.zeros_like(self.class_sums), torch.zeros_like(self.class_counts))

    def absorb(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Add the batch's (normalised) features to the experience's class sums."""
        x = check_features(x.detach().double(), "experiences: the inputs", dim=self.feature_dim,
                           dim_name="feature_dim")
        if self.normalize:
            x = torch.nn.functional.normalize(x, dim=1)
        sums, counts = self._pending
        self._pending = add_class_sums(sums.to(x.device), counts.to(x.device), x, y.long())
        committed = (self.class_sums.to(x.device), self.class_counts.to(x.device))
        return seen_class_scores(x, committed[0] + self._pending[0],
                                 committed[1] + self._pending[1], self.scoring)

    def finish_experience(self) -> None:
        """The experience's sums (over every process) added; the classifier's means updated."""
        sums, counts = self.reduction.sum([t.cpu() for t in self._pending])
        self.class_sums = self.class_sums + sums
        self.class_counts = self.class_counts + counts
        self._pending = None
        self.model.replace_class_means_dict(class_means(self.class_sums, self.class_counts))
