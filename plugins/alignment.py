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
import time

import torch
from avalanche.core import SupervisedPlugin
from avalanche.models import MultiTaskModule
from avalanche.training.supervised import JointTraining
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..models.arguments import check_int, check_number
from ..models.class_moments import reduced_class_moments
from ..models.classifier import model_part
from ..models.distributed import broadcast_from_rank0, shard
from ..models.drift import reduced_drift_jacobian, reduced_sdc_shifts
from ..models.features import extract_features
from ..models.gaussian_state import check_covariance, check_ridge, checked_state
from ..models.gaussians import ClassGaussianStats
from ..models.head_alignment import align_head, alignment_batch_size, restore_leading_slices

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
    "min_steps",
    "check_data",
    "drift_compensation",
    "drift_sigma",
    "drift_covariance",
    "drift_ridge",
    "shrink_means",
)


def check_options(options: dict) -> None:
    """A ValueError/TypeError naming the first bad option of :class:`ClassifierAlignmentPlugin`."""
    unknown = sorted(set(options) - set(_OPTIONS))
    if unknown:
        raise ValueError(f"unknown ClassifierAlignmentPlugin options {unknown}")
    ints = {"samples_per_class": 1, "epochs": 0, "min_steps": 1, "seed": 0}
    for name, low in ints.items():
        if name in options:
            check_int(options[name], name, minimum=low)
    for name in ("lr", "temperature"):
        if name in options:
            check_number(options[name], name, positive=True)
    for name in ("momentum", "weight_decay"):
        if name in options:
            check_number(options[name], name, positive=False)
    for name in ("drift_sigma", "drift_ridge"):
        if name in options:
            check_number(options[name], name, positive=True)
    for name in ("keep_aligned", "logit_norm", "check_data", "drift_compensation",
                 "drift_covariance", "shrink_means"):
        if name in options and not isinstance(options[name], bool):
            raise TypeError(f"{name} must be True or False, got {options[name]!r}")
    if options.get("drift_covariance") and not options.get("drift_compensation"):
        raise ValueError("drift_covariance=True needs drift_compensation=True (it moves the "
                         "covariances of the drift-compensated classes)")
    for name in ("features", "head"):
        if name in options and (not isinstance(options[name], str) or not options[name]):
            raise ValueError(f"{name} must be an attribute name of the model, got "
                             f"{options[name]!r}")
    for name in ("batch_size", "stats_batch_size"):
        if options.get(name) is not None:
            check_int(options[name], name, minimum=1)


def check_single_head(head: nn.Module, name: str = "classifier") -> None:
    """Refuse a multi-head (task-incremental) head: SLCA's alignment is single-head."""
    if isinstance(head, MultiTaskModule):
        raise ValueError(
            f"SLCA's classifier alignment supports single-head class-incremental models "
            f"only: model.{name} is a {type(head).__name__} (a MultiTaskModule, one head per "
            "task). Use a single head, e.g. avalanche.models.IncrementalClassifier or "
            "neve.models.PretrainedClassifier"
        )


def check_finite_inputs(dataset: Dataset, batch_size: int) -> None:
    """ValueError if an input of ``dataset`` holds NaN or inf (floating-point inputs only).

    One pass over the data in order (no model), with its own generator so the
    global random state is untouched. Raises for an empty dataset as well.
    """
    if len(dataset) == 0:
        raise ValueError("the experience's dataset is empty: there is nothing to learn")
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False,
                        generator=torch.Generator())
    seen = 0
    for batch in loader:
        x = batch[0]
        if isinstance(x, torch.Tensor) and x.is_floating_point():
            bad = ~torch.isfinite(x.reshape(len(x), -1)).all(dim=1)
            if bool(bad.any()):
                first = seen + int(bad.nonzero()[0])
                raise ValueError(
                    f"the experience's inputs contain NaN or inf (item {first}"
                    f" of {len(dataset)}); nothing was learned. Clean the data, or pass "
                    "ClassifierAlignmentPlugin(check_data=False) to skip this check"
                )
        seen += len(x)


def _training_datasets(strategy) -> list:
    """The data this training phase learns: the experience's, all of them for JointTraining."""
    if isinstance(strategy, JointTraining):
        return [exp.dataset for exp in strategy._experiences]
    return [strategy.experience.dataset]


class ClassifierAlignmentPlugin(SupervisedPlugin, supports_distributed=True):
    """SLCA's classifier alignment with class-wise Gaussian feature statistics.

    After each training experience (``after_training_exp``):

    1. the experience's training data, with its eval transforms, goes through
       ``model.<features>`` (eval mode, no grad) and each class present gets its
       mean and covariance stored (:class:`ClassGaussianStats`; classes of
       earlier experiences keep theirs; a class seen before is merged by counts).
       Under Avalanche's ``JointTraining`` the data is the whole joint training
       set (``strategy.adapted_dataset``), one training phase;
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

    Under ``torch.distributed`` each process embeds its contiguous shard of the
    experience; per-class counts and sums, then scatter matrices about the
    class means, are all-reduced (a class with at most D samples has its rows
    gathered instead: fewer numbers, and its few-sample sampler is kept;
    :func:`neve.models.class_moments.reduced_class_moments`), so every process
    stores the one-process statistics. Drift compensation all-reduces its
    kernel-weighted sums (:func:`neve.models.drift.reduced_sdc_shifts`). The
    alignment is seeded the same on every process and the aligned head is
    broadcast from rank 0.

    Single-head class-incremental models only: a ``MultiTaskModule`` head (e.g.
    ``MultiHeadClassifier``) is refused with a ValueError when training starts.
    Before each experience (``check_data``) its inputs are checked for NaN and
    inf in one pass over the data without the model, so bad data is refused
    before the weights change; an empty experience is refused always.

    Args:
        samples_per_class: features drawn per class per epoch (paper 256), >= 1.
        epochs: alignment epochs (paper 5), >= 0 (0 disables alignment).
        lr: initial SGD learning rate, cosine-annealed to 0 (paper 0.01).
        temperature: tau of the logit normalisation (paper 0.1), > 0.
        covariance: ``"full"`` (paper), ``"diagonal"`` or ``"shared"``; memory in
            :class:`ClassGaussianStats`.
        keep_aligned: see above; default False as the authors' code.
        batch_size: alignment mini-batch; ``batch_size=256`` is the authors'
            setting exactly. None (default): the authors' 256, made smaller when
            an epoch of sampled features (classes x ``samples_per_class``) would
            give fewer than ``min_steps`` SGD steps
            (:func:`neve.models.head_alignment.alignment_batch_size`): with few
            classes, a few steps of 256 leave the head nearly as it was.
        min_steps: fewest SGD steps per alignment epoch when ``batch_size`` is
            None (>= 1; ignored when ``batch_size`` is given).
        momentum, weight_decay: of the alignment SGD (authors 0.9, 5e-4).
        ridge: added to the covariance diagonal (authors 1e-4).
        logit_norm: use Eq. 3's normalisation (True) or plain logits.
        features, head: attribute names of the model's feature extractor and head.
        seed: seeds the sampling; experience k uses ``seed + k``, so runs repeat
            exactly and resume exactly from a checkpoint.
        stats_batch_size: mini-batch for the feature pass (default the
            strategy's ``eval_mb_size``).
        check_data: check each experience's inputs for NaN/inf before training
            (one pass over the data, no model; see above).

    Attributes:
        stats: the :class:`ClassGaussianStats`.
        statistics_seconds: wall time of each experience's feature pass + statistics.
        alignment_seconds: wall time of each experience's whole step (statistics +
            re-training of the head).
        alignment_losses: the mean loss per epoch of each alignment.

        drift_compensation: beyond the paper, semantic drift compensation (Yu et
            al., CVPR 2020): before training, the experience's data goes through
            the feature extractor once more; after training, the stored means of
            earlier classes are moved by the kernel-weighted mean displacement of
            those features (:func:`neve.models.drift.sdc_shifts`), before the new
            classes are stored and the head aligned. Covariances are kept unless
            ``drift_covariance``. Not under ``JointTraining`` (one phase,
            nothing to compensate).
        drift_sigma: SDC's kernel width on L2-normalised features (SDC: 0.3).
        drift_covariance: beyond SDC, also move the earlier classes'
            covariances by the linear part ``A`` of a ridge least-squares fit of
            the same displacements (:func:`neve.models.drift.drift_jacobian`):
            ``Sigma_c -> A^T Sigma_c A``. Needs ``drift_compensation``.
        drift_ridge: the fit's ridge, relative to the mean feature variance (> 0).
        shrink_means: the authors' code (not the paper): sample older classes
            around ``(0.9 + 0.1 (t_c + 1) / (T + 1)) mu_c``
            (:func:`neve.models.drift.shrink_factors`); off by default.

    Paper deviation: SLCA trains each task's head on that task's logits only;
    Avalanche's ``Naive`` uses cross-entropy over all logits
    (:class:`neve.strategies.SLCA` uses the paper's loss).
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
        batch_size: int | None = None,
        momentum: float = 0.9,
        weight_decay: float = 5e-4,
        ridge: float = 1e-4,
        logit_norm: bool = True,
        features: str = "features",
        head: str = "classifier",
        seed: int = 0,
        stats_batch_size: int | None = None,
        min_steps: int = 32,
        check_data: bool = True,
        drift_compensation: bool = False,
        drift_sigma: float = 0.3,
        drift_covariance: bool = False,
        drift_ridge: float = 1.0,
        shrink_means: bool = False,
    ) -> None:
        super().__init__()
        options = {k: v for k, v in locals().items() if k in _OPTIONS}
        check_options(options)
        check_covariance(covariance)
        check_ridge(ridge)
        for key, value in options.items():
            setattr(self, key, value)
        self.lr, self.temperature = float(lr), float(temperature)
        self.momentum, self.weight_decay = float(momentum), float(weight_decay)
        self.drift_sigma, self.drift_ridge = float(drift_sigma), float(drift_ridge)
        self._before_features: torch.Tensor | None = None
        self.stats = ClassGaussianStats(covariance, ridge)
        self.experiences_seen = 0
        self.unaligned_head: dict[str, torch.Tensor] | None = None
        self.statistics_seconds: list[float] = []
        self.alignment_seconds: list[float] = []
        self.alignment_losses: list[list[float]] = []

    def before_training(self, strategy, **kwargs) -> None:
        """Refuse a multi-head model before anything changes."""
        check_single_head(model_part(strategy.model, self.head, "head"), self.head)

    def before_train_dataset_adaptation(self, strategy, **kwargs) -> None:
        """Check the data (``check_data``); restore the unaligned head before the head can grow."""
        batch_size = self.stats_batch_size or strategy.eval_mb_size or strategy.train_mb_size
        for dataset in _training_datasets(strategy):
            if self.check_data:
                check_finite_inputs(dataset.eval() if hasattr(dataset, "eval") else dataset,
                                    batch_size)
            elif len(dataset) == 0:
                raise ValueError("the experience's dataset is empty: there is nothing to learn")
        if self.unaligned_head is not None:
            head = model_part(strategy.model, self.head, "head")
            restore_leading_slices(head, self.unaligned_head)
            self.unaligned_head = None

    def before_training_exp(self, strategy, **kwargs) -> None:
        """``drift_compensation``: the experience's features under the backbone before training."""
        self._before_features = None
        if self.drift_compensation and self.stats.classes and not isinstance(
                strategy, JointTraining):
            self._before_features = self._experience_features(strategy)[0]

    def _experience_features(self, strategy) -> tuple[torch.Tensor, torch.Tensor]:
        """Features ``[N, D]`` and targets of the experience's data (this process's shard)."""
        joint = isinstance(strategy, JointTraining)  # strategy.experience: the first only
        dataset = strategy.adapted_dataset if joint else strategy.experience.dataset
        if hasattr(dataset, "eval"):
            dataset = dataset.eval()
        batch_size = self.stats_batch_size or strategy.eval_mb_size or strategy.train_mb_size
        feature_extractor = model_part(strategy.model, self.features, "feature extractor")
        # under torch.distributed: this process's contiguous shard only
        return extract_features(feature_extractor, shard(dataset), batch_size,
                                strategy.device, cache=False, preprocess=False)

    def after_training_exp(self, strategy, **kwargs) -> None:
        """Store the experience's class statistics; from the second experience, align."""
        head = model_part(strategy.model, self.head, "head")
        start = time.perf_counter()
        feats, targets = self._experience_features(strategy)
        if self._before_features is not None:
            old = self.stats.classes
            means = torch.stack([self.stats.means[c] for c in old])
            shifts = reduced_sdc_shifts(self._before_features, feats, means, self.drift_sigma)
            jacobian = None
            if self.drift_covariance:
                jacobian = reduced_drift_jacobian(self._before_features, feats, self.drift_ridge)
            self.stats.shift_means(dict(zip(old, shifts, strict=True)))
            if jacobian is not None:
                self.stats.map_covariances(jacobian, old)
            self._before_features = None
        moments = reduced_class_moments(feats, targets, self.stats.covariance)
        self.stats.update_moments(moments, group=self.experiences_seen)
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
                batch_size=alignment_batch_size(
                    len(self.stats.classes) * self.samples_per_class, self.batch_size,
                    self.min_steps,
                ),
                momentum=self.momentum,
                weight_decay=self.weight_decay,
                generator=torch.Generator().manual_seed(self.seed + self.experiences_seen),
                device=strategy.device,
                logit_norm=self.logit_norm,
                shrink=self.shrink_means,
            )
            self.alignment_losses.append(losses)
            broadcast_from_rank0(list(head.parameters()))  # one head, even if GPU sums differ
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
        """Load a :meth:`state_dict`; everything is checked before anything changes."""
        if not isinstance(state, dict) or "options" not in state or "stats" not in state:
            raise ValueError("state must be a ClassifierAlignmentPlugin.state_dict()")
        options = dict(state["options"])
        check_options(options)
        stats = checked_state(state["stats"])
        seen = state["experiences_seen"]
        check_int(seen, "experiences_seen", minimum=0)
        head = state["unaligned_head"]
        if head is not None and not all(isinstance(v, torch.Tensor) for v in head.values()):
            raise ValueError("state['unaligned_head'] must be None or a dict of tensors")
        for key, value in options.items():
            setattr(self, key, value)
        self.stats.load_state_dict(stats)
        self.experiences_seen = seen
        self.unaligned_head = None if head is None else {k: v.clone() for k, v in head.items()}
        self.statistics_seconds = list(state["statistics_seconds"])
        self.alignment_seconds = list(state["alignment_seconds"])
        self.alignment_losses = [list(x) for x in state["alignment_losses"]]
