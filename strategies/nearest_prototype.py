"""NearestPrototype: class means on frozen features, a ProtoNet-like few-shot learner.

The prototype classifier of Kowadlo et al. (2022)'s instance test, on a frozen
backbone's features (episodes encoded by :func:`neve.benchmarks.encode_episodes`):
class sums and counts are accumulated without gradients, and Avalanche's
``NCMClassifier`` predicts the class whose mean is closest to the query
(``scoring="euclidean"``), or :class:`neve.models.prototypes.DotProductNCM` the
class whose mean has the largest dot product with it (``scoring="dot"``, the
authors' ProtoNet score).

With ``scoring="euclidean"`` (or ``"dot"`` with ``normalize=True``) and one
support item per class, a query that is an exact copy of a support item is
nearest to its own mean by construction: clean instance-test accuracy is 1.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from avalanche.models import NCMClassifier
from avalanche.training.plugins import EvaluationPlugin
from avalanche.training.templates import SupervisedTemplate
from avalanche.training.templates.base import _experiences_parameter_as_iterable

from ..models.distributed import (
    all_reduce_sum,
    exact_shard_loader,
    is_distributed,
    raise_everywhere,
)
from ..models.prototypes import DotProductNCM
from ..plugins.distributed import whole_experience_loader
from ..plugins.training_modes import experience_classes
from .arguments import check_bool, check_device, check_int
from .episodic import episode_evaluator
from .gradient_free import check_exemplar_free, check_gradient_free


def add_class_sums(
    sums: torch.Tensor, counts: torch.Tensor, x: torch.Tensor, y: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Add a batch to the per-class sums and counts, in place; returns them.

    Args:
        sums: ``[C, D]`` float64 per-class sums of features.
        counts: ``[C]`` float64 per-class item counts.
        x: ``[n, D]`` features (float64).
        y: ``[n]`` integer labels in ``[0, C)``.
    """
    sums.index_add_(0, y, x)
    counts.index_add_(0, y, torch.ones_like(y, dtype=counts.dtype))
    return sums, counts


def class_means(sums: torch.Tensor, counts: torch.Tensor) -> dict[int, torch.Tensor]:
    """``{class: sums[class] / counts[class]}`` (float32) for every class with ``counts > 0``.

    Args:
        sums: ``[C, D]`` per-class sums of features.
        counts: ``[C]`` per-class item counts.
    """
    seen = torch.nonzero(counts > 0).flatten().tolist()
    return {c: (sums[c] / counts[c]).float() for c in seen}


SCORINGS = ("euclidean", "dot")


def prototype_scores(
    x: torch.Tensor, sums: torch.Tensor, counts: torch.Tensor, scoring: str = "euclidean"
) -> torch.Tensor:
    """``[n, C]`` float32 scores of each row of ``x`` against each class mean
    ``m_c = sums[c] / counts[c]``; ``-inf`` for a class with no items yet.

    ``scoring="euclidean"``: ``-||x - m_c||`` (the argmax is the nearest mean, as
    ``NCMClassifier`` predicts); ``"dot"``: ``x . m_c`` (as ``DotProductNCM``).

    Args:
        x: ``[n, D]`` features (already normalised when the means are of normalised ones).
        sums: ``[C, D]`` per-class sums; counts: ``[C]`` per-class item counts.
        scoring: "euclidean" or "dot".
    """
    seen = counts > 0
    scores = torch.full((x.shape[0], sums.shape[0]), float("-inf"), dtype=torch.float64,
                        device=x.device)
    means = sums[seen] / counts[seen].unsqueeze(1)
    if scoring == "dot":
        scores[:, seen] = x.double() @ means.double().T
    else:
        scores[:, seen] = -torch.cdist(x.double(), means.double())
    return scores.float()


class _WithClasses:
    """An experience seen through a view that adds ``classes_in_this_experience``."""

    def __init__(self, experience, classes: list[int]) -> None:
        self._experience = experience
        self.classes_in_this_experience = classes

    def __getattr__(self, name: str):
        return getattr(self._experience, name)


class NearestPrototype(SupervisedTemplate):
    """Class means on (L2-normalised) features: a ProtoNet-like learner.

    Training adds each item's (normalised) feature to its class's running sum (no
    gradients, order-free, so it cannot forget); after each experience the means
    go into Avalanche's ``NCMClassifier``, which predicts the class whose mean is
    closest (Euclidean) to the (normalised) query, or, with ``scoring="dot"``, into
    :class:`~neve.models.prototypes.DotProductNCM`, which predicts the class whose
    mean has the largest dot product with it (the authors' ProtoNet score; use
    ``normalize=False`` for their unnormalised embeddings). State: ``class_sums`` ``[C, D]``
    and ``class_counts`` ``[C]`` (float64 tensors). An experience is learned whole
    or not at all: the sums grow on a copy, kept when the experience ends.

    During training, ``mb_output`` holds :func:`prototype_scores` of the
    mini-batch against the means after adding it (``-inf`` for classes not seen
    yet), so Avalanche's training metrics (``accuracy_metrics(epoch=True)``,
    ``default_evaluator()``) report the nearest-mean accuracy on the data seen;
    ``loss`` stays 0 (there is no loss).

    Gradient plugins (EWC, LwF, SI, MAS, GEM...) are refused with a ValueError
    naming the plugin: there are no gradients or optimizer here.

    Args:
        num_classes: largest label + 1.
        feature_dim: size of the input features.
        normalize: L2-normalise features (and queries) first.
        scoring: "euclidean" (nearest mean, default) or "dot" (largest dot product).
        train_mb_size, eval_mb_size, device, plugins, evaluator, eval_every: as for
            Avalanche strategies (``evaluator`` default: :func:`episode_evaluator`).
        train_epochs: fixed to 1 (a ValueError otherwise): a second pass would
            count every item twice in the class means.

    Raises:
        ValueError: at :meth:`train`, for an experience with no items, labels
            outside ``[0, num_classes)``, features of another size than
            ``feature_dim`` or with NaN/inf (state unchanged).
    """

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
        num_classes = check_int(num_classes, "num_classes", minimum=1)
        feature_dim = check_int(feature_dim, "feature_dim", minimum=1)
        check_bool(normalize, "normalize")
        if scoring not in SCORINGS:
            raise ValueError(f"scoring must be one of {SCORINGS}, got {scoring!r}")
        train_mb_size = check_int(train_mb_size, "train_mb_size", minimum=1)
        eval_mb_size = check_int(eval_mb_size, "eval_mb_size", minimum=1)
        eval_every = check_int(eval_every, "eval_every", minimum=-1)
        device = check_device(device)
        if train_epochs != 1:
            raise ValueError(
                f"train_epochs is fixed to 1 in NearestPrototype, got {train_epochs!r}: a "
                "second pass would count every item twice in the class means"
            )
        plugins = list(plugins or [])
        check_gradient_free(plugins, "NearestPrototype")
        check_exemplar_free(plugins, "NearestPrototype")
        super().__init__(
            model=(DotProductNCM if scoring == "dot" else NCMClassifier)(normalize=normalize),
            optimizer=None,  # type: ignore[arg-type]
            criterion=torch.nn.CrossEntropyLoss(),
            train_mb_size=train_mb_size,
            train_epochs=1,
            eval_mb_size=eval_mb_size,
            device=device,
            plugins=plugins,
            evaluator=evaluator if evaluator is not None else episode_evaluator(),
            eval_every=eval_every,
        )
        self.normalize = normalize
        self.scoring = scoring
        self.class_sums = torch.zeros(num_classes, feature_dim, dtype=torch.float64)
        self.class_counts = torch.zeros(num_classes, dtype=torch.float64)
        self._pending: tuple[torch.Tensor, torch.Tensor] | None = None

    def train(self, experiences, eval_streams=None, **kwargs):
        """Avalanche's ``train``, after checking every experience's items and labels first."""
        experiences = list(_experiences_parameter_as_iterable(experiences))
        check_gradient_free(self.plugins, "NearestPrototype")
        check_exemplar_free(self.plugins, "NearestPrototype")
        for exp in experiences:
            self._check_experience(exp)
        return super().train(experiences, eval_streams, **kwargs)

    def _check_experience(self, experience) -> None:
        dataset = experience.dataset
        where = f"experiences: experience {getattr(experience, 'current_experience', '?')}"
        if len(dataset) == 0:
            raise ValueError(f"{where} has no items; NearestPrototype needs at least one")
        targets = torch.as_tensor(list(dataset.targets))
        if targets.is_floating_point() and not bool((targets == targets.round()).all()):
            raise ValueError(f"{where} has non-integer labels")
        low, high = int(targets.min()), int(targets.max())
        if low < 0 or high >= len(self.class_counts):
            raise ValueError(f"{where} has labels in [{low}, {high}], outside "
                             f"[0, num_classes={len(self.class_counts)})")

    def make_optimizer(self, **kwargs) -> None:
        """No optimiser: the class means are accumulated."""

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

    def _before_training_exp(self, **kwargs) -> None:
        # under torch.distributed this process's sums start at zero and are summed
        # over the processes, then added, when the experience ends
        start = (self.class_sums, self.class_counts)
        self._pending = tuple(torch.zeros_like(t) if is_distributed() else t.clone()
                              for t in start)
        super()._before_training_exp(**kwargs)

    def make_train_dataloader(self, **kwargs) -> None:
        """Avalanche's loader; under ``torch.distributed`` this process's exact shard
        (no ``DistributedSampler`` padding, which would count repeated items twice)."""
        if not is_distributed():
            return super().make_train_dataloader(**kwargs)
        data = self.adapted_dataset
        self.dataloader = exact_shard_loader(data, int(self.train_mb_size),
                                             collate_fn=data.collate_fn)

    def make_eval_dataloader(self, **kwargs) -> None:
        """Avalanche's loader; under ``torch.distributed`` the whole experience in every
        process (Avalanche does not reduce its metrics across processes)."""
        if not is_distributed():
            return super().make_eval_dataloader(**kwargs)
        self.dataloader = whole_experience_loader(self.adapted_dataset, self.eval_mb_size)

    def training_epoch(self, **kwargs) -> None:
        """One pass over the experience; under ``torch.distributed`` a bad batch (or any
        error) on one process is refused on every process (an agreed flag), so none
        waits forever in the sums' all-reduce."""
        if not is_distributed():
            return self._accumulate_epoch(**kwargs)
        error: Exception | None = None
        try:
            self._accumulate_epoch(**kwargs)
        except Exception as err:  # noqa: BLE001 - raised below, on every process
            error = err
        try:
            raise_everywhere(error, "experiences: another process refused a batch of this "
                             "experience (see its error); nothing of this experience was learned")
        except Exception:
            self._pending = None
            raise

    def _accumulate_epoch(self, **kwargs) -> None:
        dim = self.class_sums.shape[1]
        for mbatch in self.dataloader:
            self.mbatch = mbatch
            self._unpack_minibatch()
            self._before_training_iteration(**kwargs)
            self.loss = self._make_empty_loss()
            x = self.mb_x.detach().double().flatten(1)
            if x.shape[1] != dim or not bool(torch.isfinite(x).all()):
                self._pending = None
                raise ValueError(
                    f"experiences: features must be finite vectors of feature_dim={dim} "
                    f"values, got shape {tuple(x.shape)}"
                    + ("" if x.shape[1] != dim else " with NaN or inf")
                    + "; nothing of this experience was learned"
                )
            if self.normalize:
                x = torch.nn.functional.normalize(x, dim=1)
            sums, counts = self._pending
            self._pending = add_class_sums(
                sums.to(x.device), counts.to(x.device), x, self.mb_y.detach().long()
            )
            self._before_forward(**kwargs)
            self.mb_output = prototype_scores(x, *self._pending, scoring=self.scoring)
            self._after_forward(**kwargs)
            self._after_training_iteration(**kwargs)

    def _after_training_exp(self, **kwargs) -> None:
        if is_distributed():
            sums, counts = all_reduce_sum(self._pending)
            self._pending = (self.class_sums + sums.to(self.class_sums.device),
                             self.class_counts + counts.to(self.class_counts.device))
        self.class_sums, self.class_counts = self._pending
        self._pending = None
        self.model.replace_class_means_dict(class_means(self.class_sums, self.class_counts))
        super()._after_training_exp(**kwargs)
