"""SLCA's classifier alignment as an Avalanche plugin.

Zhang, Wang, Kang, Chen, Wei, "SLCA: Slow Learner with Classifier Alignment for
Continual Learning on a Pre-trained Model", ICCV 2023 (Sec. 4.2, Eq. 3). The
plugin is the wiring: one frozen-feature pass per experience
(:func:`neve.models.features.extract_features`), the class Gaussians
(:class:`neve.models.gaussians.ClassGaussianStats`) and the head re-training
(:func:`neve.models.head_alignment.align_head`). The feature extractor and the
head are found on the model by attribute name (neve's model contract,
:mod:`neve.models.classifier`).
"""

from __future__ import annotations

import copy
import math
import time

import torch
from avalanche.core import SupervisedPlugin

from ..models.classifier import model_part
from ..models.features import extract_features
from ..models.gaussians import COVARIANCE_KINDS, ClassGaussianStats
from ..models.head_alignment import align_head, restore_leading_slices

# the plugin's options, as stored under "options" by state_dict (covariance and
# ridge are stored with the statistics)
_OPTIONS = (
    "samples_per_class",
    "epochs",
    "lr",
    "temperature",
    "keep_aligned",
    "batch_size",
    "momentum",
    "weight_decay",
    "logit_norm",
    "features",
    "head",
    "seed",
    "stats_batch_size",
)


class ClassifierAlignmentPlugin(SupervisedPlugin):
    """SLCA's classifier alignment with class-wise Gaussian feature statistics.

    After each training experience (``after_training_exp``):

    1. the experience's training data, with its eval transforms, goes through
       ``model.<features>`` (eval mode, no grad) and each class present gets its
       mean and covariance stored (:class:`ClassGaussianStats`; classes of
       earlier experiences keep theirs);
    2. from the second experience on, ``model.<head>`` is re-trained on sampled
       features for all stored classes (:func:`align_head`). The representation
       is never touched (its parameters get no gradient and no update).

    Whether the aligned head stays (``keep_aligned``): the authors' code backs
    the head up before alignment and restores it after evaluation, so alignment
    changes what is evaluated but training on the next experience continues
    from the unaligned head. That is the default (``keep_aligned=False``): the
    unaligned head is restored when the next training experience starts (in
    ``before_train_dataset_adaptation``, before Avalanche grows the head).
    ``keep_aligned=True`` keeps training from the aligned head.

    Plugin order matters for plugins that copy the model in ``after_training_exp``
    (e.g. ``LwFPlugin``): put this plugin after them so they copy the unaligned
    model (:class:`neve.strategies.SLCA` does).

    Single-sample classes: the covariance is undefined, so it is ``ridge * I``.

    Args:
        samples_per_class: features drawn per class per epoch (paper 256), >= 1.
        epochs: alignment epochs (paper 5), >= 0 (0 disables alignment).
        lr: initial SGD learning rate, cosine-annealed to 0 (paper 0.01).
        temperature: tau of the logit normalisation (paper 0.1), > 0.
        covariance: ``"full"`` (paper), ``"diagonal"`` or ``"shared"``; memory in
            :class:`ClassGaussianStats`.
        keep_aligned: see above; default False as the authors' code.
        batch_size: alignment mini-batch (authors 256).
        momentum, weight_decay: of the alignment SGD (authors 0.9, 5e-4).
        ridge: added to the covariance diagonal (authors 1e-4).
        logit_norm: use Eq. 3's normalisation (True) or plain logits.
        features, head: attribute names of the model's feature extractor and head.
        seed: seeds the sampling; experience k uses ``seed + k``, so runs repeat
            exactly and resume exactly from a checkpoint.
        stats_batch_size: mini-batch for the feature pass (default the
            strategy's ``eval_mb_size``).

    Attributes:
        stats: the :class:`ClassGaussianStats`.
        statistics_seconds: wall time of each experience's feature pass + statistics.
        alignment_seconds: wall time of each experience's whole step (statistics +
            re-training of the head).
        alignment_losses: the mean loss per epoch of each alignment.

    Not implemented: the authors' code also shrinks older classes' means by
    ``0.9 + 0.1 (t_c + 1) / (T + 1)`` before sampling, which the paper does not
    describe. Paper deviations: SLCA trains each task's head on that task's
    logits only; Avalanche's ``Naive`` uses cross-entropy over all logits.
    """

    def __init__(
        self,
        *,
        samples_per_class: int = 256,
        epochs: int = 5,
        lr: float = 0.01,
        temperature: float = 0.1,
        covariance: str = "full",
        keep_aligned: bool = False,
        batch_size: int = 256,
        momentum: float = 0.9,
        weight_decay: float = 5e-4,
        ridge: float = 1e-4,
        logit_norm: bool = True,
        features: str = "features",
        head: str = "classifier",
        seed: int = 0,
        stats_batch_size: int | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(samples_per_class, int) or samples_per_class < 1:
            raise ValueError(f"samples_per_class must be an int >= 1, got {samples_per_class!r}")
        if not isinstance(epochs, int) or epochs < 0:
            raise ValueError(f"epochs must be an int >= 0, got {epochs!r}")
        if not math.isfinite(lr) or lr <= 0:
            raise ValueError(f"lr must be a finite number > 0, got {lr!r}")
        if not math.isfinite(temperature) or temperature <= 0:
            raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
        if covariance not in COVARIANCE_KINDS:
            raise ValueError(f"covariance must be one of {COVARIANCE_KINDS}, got {covariance!r}")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
        if momentum < 0 or weight_decay < 0:
            raise ValueError(
                f"momentum and weight_decay must be >= 0, got {momentum!r}, {weight_decay!r}"
            )
        if stats_batch_size is not None and stats_batch_size < 1:
            raise ValueError(f"stats_batch_size must be >= 1, got {stats_batch_size!r}")
        self.samples_per_class = samples_per_class
        self.epochs = epochs
        self.lr = float(lr)
        self.temperature = float(temperature)
        self.keep_aligned = bool(keep_aligned)
        self.batch_size = batch_size
        self.momentum = float(momentum)
        self.weight_decay = float(weight_decay)
        self.logit_norm = bool(logit_norm)
        self.features = features
        self.head = head
        self.seed = int(seed)
        self.stats_batch_size = stats_batch_size
        self.stats = ClassGaussianStats(covariance, ridge)
        self.experiences_seen = 0
        self.unaligned_head: dict[str, torch.Tensor] | None = None
        self.statistics_seconds: list[float] = []
        self.alignment_seconds: list[float] = []
        self.alignment_losses: list[list[float]] = []

    def before_train_dataset_adaptation(self, strategy, **kwargs) -> None:
        """Restore the unaligned head (``keep_aligned=False``) before the head can grow."""
        if self.unaligned_head is not None:
            head = model_part(strategy.model, self.head, "head")
            restore_leading_slices(head, self.unaligned_head)
            self.unaligned_head = None

    def after_training_exp(self, strategy, **kwargs) -> None:
        """Store the experience's class statistics; from the second experience, align."""
        model = strategy.model
        feature_extractor = model_part(model, self.features, "feature extractor")
        head = model_part(model, self.head, "head")
        start = time.perf_counter()
        dataset = strategy.experience.dataset
        if hasattr(dataset, "eval"):
            dataset = dataset.eval()
        batch_size = self.stats_batch_size or strategy.eval_mb_size or strategy.train_mb_size
        feats, targets = extract_features(
            feature_extractor, dataset, batch_size, strategy.device, cache=False, preprocess=False
        )
        self.stats.update(feats, targets, group=self.experiences_seen)
        self.experiences_seen += 1
        self.statistics_seconds.append(time.perf_counter() - start)
        if self.experiences_seen >= 2 and self.epochs > 0:
            if not self.keep_aligned:
                self.unaligned_head = copy.deepcopy(head.state_dict())
            losses = align_head(
                head,
                self.stats,
                samples_per_class=self.samples_per_class,
                epochs=self.epochs,
                lr=self.lr,
                temperature=self.temperature,
                batch_size=self.batch_size,
                momentum=self.momentum,
                weight_decay=self.weight_decay,
                generator=torch.Generator().manual_seed(self.seed + self.experiences_seen),
                device=strategy.device,
                logit_norm=self.logit_norm,
            )
            self.alignment_losses.append(losses)
        self.alignment_seconds.append(time.perf_counter() - start)

    def state_dict(self) -> dict:
        return {
            "options": {key: getattr(self, key) for key in _OPTIONS},
            "stats": self.stats.state_dict(),
            "experiences_seen": self.experiences_seen,
            "unaligned_head": None
            if self.unaligned_head is None
            else {k: v.clone() for k, v in self.unaligned_head.items()},
            "statistics_seconds": list(self.statistics_seconds),
            "alignment_seconds": list(self.alignment_seconds),
            "alignment_losses": [list(x) for x in self.alignment_losses],
        }

    def load_state_dict(self, state: dict) -> None:
        for key, value in state["options"].items():
            setattr(self, key, value)
        self.stats.load_state_dict(state["stats"])
        self.experiences_seen = int(state["experiences_seen"])
        head = state["unaligned_head"]
        self.unaligned_head = None if head is None else {k: v.clone() for k, v in head.items()}
        self.statistics_seconds = list(state["statistics_seconds"])
        self.alignment_seconds = list(state["alignment_seconds"])
        self.alignment_losses = [list(x) for x in state["alignment_losses"]]
