"""SLCA's classifier alignment as an Avalanche plugin.

Zhang, Wang, Kang, Chen, Wei, "SLCA: Slow Learner with Classifier Alignment for
Continual Learning on a Pre-trained Model", ICCV 2023 (Sec. 4.2, Eq. 3). The
plugin is the wiring: one frozen-feature pass per experience
(:func:`neve.models.features.extract_features`), the class Gaussians
(:class:`neve.models.gaussians.ClassGaussianStats` from
:func:`neve.models.class_moments.class_moments`),
drift compensation (:func:`neve.models.drift.compensate_drift`) and the head
re-training (:func:`neve.models.head_alignment.align_head`). The feature
extractor and the head are found on the model by attribute name (neve's model
contract, :mod:`neve.models.classifier`).
"""

from __future__ import annotations

import copy
import time

import torch
from avalanche.core import SupervisedPlugin
from avalanche.training.supervised import JointTraining

from ..models.class_moments import class_moments
from ..models.classifier import check_single_head, model_part
from ..models.core.checks import Bool, Int, Real, Seed, Text, validate, validated
from ..models.core.distributed import default_reduction, shard
from ..models.drift import compensate_drift
from ..models.features import extract_features
from ..models.gaussian_checks import COVARIANCE, RIDGE, checked_state
from ..models.gaussians import ClassGaussianStats
from ..models.head_alignment import (
    ALIGNMENT,
    align_head,
    alignment_batch_size,
    restore_leading_slices,
)
from ..models.incremental_ridge import DEFAULT_MAX_CLASSES
from .experience_data import check_experience_data, training_datasets

#: The plugin's options and their constraints (covariance and ridge live in the statistics).
OPTIONS = {
    **ALIGNMENT, "batch_size": Int(1, optional=True), "keep_aligned": Bool(),
    "logit_norm": Bool(), "features": Text("an attribute name of the model"),
    "head": Text("an attribute name of the model"), "seed": Seed(),
    "stats_batch_size": Int(1, optional=True), "min_steps": Int(1), "check_data": Bool(),
    "drift_compensation": Bool(), "drift_sigma": Real(gt=0.0), "drift_covariance": Bool(),
    "drift_ridge": Real(gt=0.0), "shrink_means": Bool(), "max_classes": Int(1),
}


_RECORDS = ("statistics_seconds", "alignment_seconds", "alignment_losses")


def _check_drift_options(options: dict) -> None:
    if options["drift_covariance"] and not options["drift_compensation"]:
        raise ValueError("drift_covariance=True needs drift_compensation=True (it moves the "
                         "covariances of the drift-compensated classes)")


class ClassifierAlignmentPlugin(SupervisedPlugin, supports_distributed=True):
    """SLCA's classifier alignment with class-wise Gaussian feature statistics.

    After each training experience: (1) the experience's training data (eval
    transforms; for ``JointTraining`` the joint set) goes through
    ``model.<features>`` (eval mode, no grad) and each class present gets its mean
    and covariance stored (:class:`ClassGaussianStats`; a class seen before is
    merged by counts); (2) from the second experience on, ``model.<head>`` is
    re-trained on features sampled for all stored classes (:func:`align_head`);
    the representation is never touched.

    ``keep_aligned=False`` (default, as the authors' code, which restores the head
    after evaluation): the unaligned head is put back when the next training
    experience starts, before Avalanche grows the head, so alignment changes what
    is evaluated but training continues from the unaligned head.

    Put it after plugins that copy the model in ``after_training_exp`` (e.g.
    ``LwFPlugin``), so they copy the unaligned model (:class:`neve.strategies.SLCA` does).

    Under ``torch.distributed`` each process embeds its contiguous shard of the
    experience and the statistics are combined over the processes
    (:func:`~neve.models.class_moments.class_moments` and the drift compensation
    with a reduction), so every process stores the one-process statistics; the
    alignment is seeded the same on every process and the aligned head is taken
    from rank 0.

    Single-head models only (a ``MultiTaskModule`` head is refused). Before each
    experience, before the head can grow, its labels are checked (integers >= 0
    below ``max_classes``) and, with ``check_data``, one pass over the data checks
    that the items give those labels and that the inputs are finite and of the
    model's dtype (:func:`~neve.plugins.experience_data.check_experience_data`).

    Args:
        samples_per_class: features drawn per class per epoch (paper 256), >= 1.
        epochs: alignment epochs (paper 5), >= 0 (0 disables alignment).
        lr: initial SGD learning rate, cosine-annealed to 0 (paper 0.01).
        temperature: tau of the logit normalisation (paper 0.1), > 0.
        covariance: ``"full"`` (paper), ``"diagonal"`` or ``"shared"``; memory in
            :class:`ClassGaussianStats`.
        keep_aligned: see above; default False as the authors' code.
        batch_size: alignment mini-batch; 256 is the authors' setting. None
            (default): 256, made smaller when an epoch of sampled features would
            give fewer than ``min_steps`` SGD steps (:func:`alignment_batch_size`).
        min_steps: fewest SGD steps per alignment epoch when ``batch_size`` is None.
        momentum, weight_decay: of the alignment SGD (authors 0.9, 5e-4).
        ridge: added to the covariance diagonal (authors 1e-4); a one-sample class's covariance.
        logit_norm: use Eq. 3's normalisation (True) or plain logits.
        features, head: attribute names of the model's feature extractor and head.
        seed: seeds the sampling; experience k uses ``seed + k``, so runs repeat
            and resume exactly.
        stats_batch_size: mini-batch of the feature pass (default ``eval_mb_size``).
        check_data: the pass over each experience's data before training (see above).
        max_classes: the largest class count (labels ``>= max_classes`` are refused).
        drift_compensation: beyond the paper, semantic drift compensation (Yu et al., CVPR
            2020): the experience's features before and after training move the stored
            means of earlier classes (:func:`~neve.models.drift.compensate_drift`); not
            under ``JointTraining``.
        drift_sigma: SDC's kernel width on L2-normalised features (SDC: 0.3).
        drift_covariance: also move the earlier classes' covariances by a ridge fit
            of the displacement (needs ``drift_compensation``).
        drift_ridge: that fit's ridge, relative to the mean feature variance (> 0).
        shrink_means: the authors' code (not the paper): sample older classes
            around ``(0.9 + 0.1 (t_c + 1) / (T + 1)) mu_c``.

    Attributes:
        stats: the :class:`ClassGaussianStats`.
        statistics_seconds, alignment_seconds: wall time of each experience's feature
            pass + statistics, and of its whole step.
        alignment_losses: the mean loss per epoch of each alignment.
    """

    checkpointed = ("covariance", "ridge", *OPTIONS)

    @validated(**OPTIONS, covariance=COVARIANCE, ridge=RIDGE)
    def __init__(self, *, samples_per_class: int = 256, epochs: int = 5, lr: float = 0.01,
                 temperature: float = 0.1, covariance: str = "full", keep_aligned: bool = False,
                 batch_size: int | None = None, momentum: float = 0.9,
                 weight_decay: float = 5e-4, ridge: float = 1e-4, logit_norm: bool = True,
                 features: str = "features", head: str = "classifier", seed: int = 0,
                 stats_batch_size: int | None = None, min_steps: int = 32,
                 check_data: bool = True, drift_compensation: bool = False,
                 drift_sigma: float = 0.3, drift_covariance: bool = False,
                 drift_ridge: float = 1.0, shrink_means: bool = False,
                 max_classes: int = DEFAULT_MAX_CLASSES) -> None:
        super().__init__()
        options = {k: v for k, v in locals().items() if k in OPTIONS}
        _check_drift_options(options)
        vars(self).update(options)
        self.stats = ClassGaussianStats(covariance, ridge)
        self.experiences_seen = 0
        self.unaligned_head: dict[str, torch.Tensor] | None = None
        self.statistics_seconds: list[float] = []
        self.alignment_seconds: list[float] = []
        self.alignment_losses: list[list[float]] = []
        self._before_features: torch.Tensor | None = None

    covariance = property(lambda self: self.stats.covariance)
    ridge = property(lambda self: self.stats.ridge)

    def _batch_size(self, strategy) -> int:
        return self.stats_batch_size or strategy.eval_mb_size or strategy.train_mb_size

    def before_training(self, strategy, **kwargs) -> None:
        """Refuse a multi-head model before anything changes."""
        check_single_head(model_part(strategy.model, self.head, "head"), self.head)

    def before_train_dataset_adaptation(self, strategy, **kwargs) -> None:
        """Check the data (see the class docstring); restore the unaligned head before the
        head can grow."""
        extractor = model_part(strategy.model, self.features, "feature extractor")
        dtype = next((p.dtype for p in extractor.parameters() if p.is_floating_point()), None)
        for dataset in training_datasets(strategy):
            check_experience_data(dataset, self._batch_size(strategy),
                                  max_classes=self.max_classes, values=self.check_data,
                                  dtype=dtype, skip="ClassifierAlignmentPlugin(check_data=False)")
        if self.unaligned_head is not None:
            restore_leading_slices(model_part(strategy.model, self.head, "head"),
                                   self.unaligned_head)
            self.unaligned_head = None

    def before_training_exp(self, strategy, **kwargs) -> None:
        """``drift_compensation``: the experience's features under the backbone before training."""
        self._before_features = None
        if self.drift_compensation and self.stats.classes and not isinstance(
                strategy, JointTraining):
            self._before_features = self._experience_features(strategy)[0]

    def _experience_features(self, strategy) -> tuple[torch.Tensor, torch.Tensor]:
        """Features ``[N, D]`` and targets of the phase's data (this process's shard)."""
        joint = isinstance(strategy, JointTraining)  # strategy.experience: the first only
        dataset = strategy.adapted_dataset if joint else strategy.experience.dataset
        dataset = dataset.eval() if hasattr(dataset, "eval") else dataset
        extractor = model_part(strategy.model, self.features, "feature extractor")
        return extract_features(extractor, shard(dataset), self._batch_size(strategy),
                                strategy.device, cache=False, preprocess=False)

    def after_training_exp(self, strategy, **kwargs) -> None:
        """Store the experience's class statistics; from the second experience, align."""
        head = model_part(strategy.model, self.head, "head")
        start, reduction = time.perf_counter(), default_reduction()
        feats, targets = self._experience_features(strategy)
        if self._before_features is not None:
            compensate_drift(self.stats, self._before_features, feats, sigma=self.drift_sigma,
                             covariance_ridge=self.drift_ridge if self.drift_covariance else None,
                             reduction=reduction)
            self._before_features = None
        moments = class_moments(feats, targets, self.stats.covariance, reduction)
        self.stats.update_moments(moments, group=self.experiences_seen)
        self.experiences_seen += 1
        self.statistics_seconds.append(time.perf_counter() - start)
        if self.experiences_seen >= 2 and self.epochs > 0:
            if not self.keep_aligned:
                self.unaligned_head = copy.deepcopy(head.state_dict())
            batch = alignment_batch_size(len(self.stats.classes) * self.samples_per_class,
                                         self.batch_size, self.min_steps)
            self.alignment_losses.append(align_head(
                head, self.stats, samples_per_class=self.samples_per_class, epochs=self.epochs,
                lr=self.lr, temperature=self.temperature, batch_size=batch,
                momentum=self.momentum, weight_decay=self.weight_decay,
                generator=torch.Generator().manual_seed(self.seed + self.experiences_seen),
                device=strategy.device, logit_norm=self.logit_norm, shrink=self.shrink_means))
            reduction.from_first(list(head.parameters()))  # one head, even if GPU sums differ
        self.alignment_seconds.append(time.perf_counter() - start)

    def state_dict(self) -> dict:
        head = self.unaligned_head
        return {"options": {key: getattr(self, key) for key in OPTIONS},
                "stats": self.stats.state_dict(), "experiences_seen": self.experiences_seen,
                "unaligned_head": None if head is None else {k: v.clone() for k, v in head.items()},
                **{key: copy.deepcopy(getattr(self, key)) for key in _RECORDS}}

    def load_state_dict(self, state: dict) -> None:
        """Load a :meth:`state_dict`; everything is checked before anything changes."""
        if not isinstance(state, dict) or "options" not in state or "stats" not in state:
            raise ValueError("state must be a ClassifierAlignmentPlugin.state_dict()")
        unknown = sorted(set(state["options"]) - set(OPTIONS))
        if unknown:
            raise ValueError(f"unknown ClassifierAlignmentPlugin options {unknown}")
        options = validate(OPTIONS, {**{k: getattr(self, k) for k in OPTIONS},
                                     **state["options"]})
        _check_drift_options(options)
        stats = checked_state(state["stats"])
        seen = Int(0).check(state["experiences_seen"], "experiences_seen")
        head = state["unaligned_head"]
        if head is not None and not all(isinstance(v, torch.Tensor) for v in head.values()):
            raise ValueError("state['unaligned_head'] must be None or a dict of tensors")
        vars(self).update(options, experiences_seen=seen, **{
            key: copy.deepcopy(state[key]) for key in _RECORDS})
        self.stats.load_state_dict(stats)
        self.unaligned_head = None if head is None else {k: v.clone() for k, v in head.items()}
