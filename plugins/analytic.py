"""A closed-form analytic head (ACIL / G-ACIL) for any gradient strategy.

Zhuang et al., "ACIL" (NeurIPS 2022) and "G-ACIL" (2024): a random ReLU buffer
layer and a ridge classifier that equals the joint solution over all data seen
(ACIL eq. 6). :class:`AnalyticHeadPlugin` bolts it onto a strategy that trains its
model with gradients (Naive, Replay, EWC, LwF, ...).

The model contract (neve's, see :mod:`neve.models.classifier`): the strategy's
model has a sub-module ``features`` (or another attribute name passed as
``features="name"``) mapping a batch of the dataset's inputs to feature vectors
``[n, d]``; or pass any callable ``features=fn`` with ``fn(x) -> [n, d]``.
:class:`neve.models.PretrainedClassifier` meets it.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
from avalanche.core import SupervisedPlugin
from torch import nn
from torch.utils.data import Subset

from ..models.analytic import PROJECTION_DTYPE, BufferLayer, IncrementalRidge
from ..models.classifier import model_part
from ..models.core.checks import AnyOf, Function, Int, Real, Seed, Text, validated
from ..models.core.data_checks import check_labels
from ..models.core.distributed import equal_batches, is_distributed
from ..models.features import iter_features
from ..models.incremental_ridge import DEFAULT_MAX_CLASSES
from .distributed import DDPPlugin
from .experience_data import trained_parameters, training_data


class AnalyticHeadPlugin(SupervisedPlugin, supports_distributed=True):
    """Fits a closed-form head on the trained backbone's features; answers evaluation with it.

    After each training experience the plugin passes that experience's training
    data (eval-mode transforms, model in eval mode, no gradient) through
    ``features`` and the buffer layer, and adds it to the ridge statistics. During
    evaluation it replaces the strategy's ``mb_output`` with the analytic head's
    logits (widened, with each row's minimum minus one, to the model's own output
    width so the loss stays defined). The statistics of earlier experiences were
    computed with the backbone as it was then: the head is the joint ridge solution
    over features as they were seen, exemplar-free. Evaluation computes the
    features once more per mini-batch (a second backbone pass).

    With trainable features the statistics of earlier experiences go stale: the
    head then mixes features of different backbones, and every strategy ends
    near Naive; the plugin warns once (``UserWarning``) when the
    optimizer updates parameters of the feature extractor. Freeze the features
    (``requires_grad_(False)``) to keep the joint solution.

    With Avalanche's ``JointTraining`` the head is fitted once on the joint
    training set (``strategy.adapted_dataset``). An experience is added whole or
    not at all: when a batch is refused, the head is left as it was.

    Args:
        buffer_size: size of the random ReLU buffer layer.
        gamma: ridge strength (> 0).
        features: ``None`` (use ``model.features``), the name of a sub-module of the
            model (dotted names allowed), or a callable ``fn(x) -> [n, d]``.
        seed: seed of the buffer layer's random weights.
        batch_size: mini-batch size of the fitting pass (default: the strategy's
            ``eval_mb_size``).
        projection_dtype: precision of the buffer layer's product, ``torch.float64``
            (default) or ``torch.float32`` (faster), see :class:`neve.models.BufferLayer`.
        max_classes: largest class count of the head, see
            :class:`neve.models.IncrementalRidge`.

    Under ``torch.distributed`` trainable features need :class:`DDPPlugin` (else a
    RuntimeError before the experience is trained): without it each process
    would train its own backbone on its shard.

    Raises:
        ValueError: when the model has no such sub-module, or its output is not
            ``[n, d]`` features (at the first use); when the targets are not
            integers, or a batch is refused by the head.
    """

    checkpointed = ("buffer_size", "gamma", "seed", "batch_size", "projection_dtype",
                    "max_classes")

    @validated(buffer_size=Int(1), gamma=Real(gt=0.0), seed=Seed(),
               features=AnyOf(Text("an attribute name", optional=True), Function()),
               batch_size=Int(1, optional=True), projection_dtype=PROJECTION_DTYPE,
               max_classes=Int(1))
    def __init__(
        self,
        buffer_size: int = 4096,
        *,
        gamma: float = 1.0,
        features: str | Callable[[torch.Tensor], torch.Tensor] | None = None,
        seed: int = 0,
        batch_size: int | None = None,
        projection_dtype: torch.dtype = torch.float64,
        max_classes: int = DEFAULT_MAX_CLASSES,
    ) -> None:
        super().__init__()
        self.buffer_size, self.gamma, self.features, self.seed = buffer_size, gamma, features, seed
        self.batch_size, self.projection_dtype = batch_size, projection_dtype
        self.max_classes = max_classes
        self._warned_trainable = False  # a warning shown once, not state
        self.buffer: BufferLayer | None = None
        self.head: IncrementalRidge | None = None

    # -- contract ----------------------------------------------------------------------
    def feature_extractor(self, model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
        """The callable mapping inputs to features, or a ValueError naming what is missing."""
        if self.features is not None and not isinstance(self.features, str):
            return self.features
        return model_part(model, self.features or "features", "feature extractor")

    def _features(self, strategy, x: torch.Tensor) -> torch.Tensor:
        out = self.feature_extractor(strategy.model)(x)
        if not isinstance(out, torch.Tensor) or out.dim() != 2:
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(
                f"AnalyticHeadPlugin: the features must be a [n, d] tensor, got {shape}; "
                "check the model's features sub-module or the features= callable"
            )
        if self.buffer is not None and out.shape[1] != self.buffer.in_features:
            raise ValueError(
                f"AnalyticHeadPlugin: the features have size {out.shape[1]}, but the head was "
                f"fitted on size {self.buffer.in_features}"
            )
        return out

    # -- state -------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Buffer weights and ridge statistics (plain tensors), for checkpoints."""
        if self.head is None:
            return {}
        return {
            "in_features": self.buffer.in_features,
            "buffer": self.buffer.state_dict(),
            "head": self.head.state_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        if not state:
            self.buffer = self.head = None
            return
        self._build(int(state["in_features"]), torch.device("cpu"))
        self.buffer.load_state_dict(state["buffer"])
        self.head.load_state_dict(state["head"])

    def _build(self, in_features: int, device: torch.device) -> None:
        self.buffer = BufferLayer(
            in_features, self.buffer_size, seed=self.seed, projection_dtype=self.projection_dtype
        ).to(device)
        self.head = IncrementalRidge(
            self.buffer_size, self.gamma, max_classes=self.max_classes
        ).to(device)

    def _warn_if_trainable(self, strategy) -> None:
        if self._warned_trainable:
            return
        extractor = self.feature_extractor(strategy.model)
        trained = trained_parameters(extractor, getattr(strategy, "optimizer", None))
        if trained:
            self._warned_trainable = True
            warnings.warn(
                f"AnalyticHeadPlugin: the optimizer updates {len(trained)} trainable "
                "parameter(s) of the feature extractor it reads, so the statistics of earlier "
                "experiences go stale and the head ends near Naive; freeze the features "
                "(requires_grad_(False)) to keep the joint ridge solution",
                UserWarning,
                stacklevel=2,
            )

    # -- hooks -------------------------------------------------------------------------
    def before_training_exp(self, strategy, **kwargs) -> None:
        """Under several processes, refuse trainable features that DDP does not average."""
        if not is_distributed() or any(isinstance(p, DDPPlugin) for p in strategy.plugins):
            return
        extractor = self.feature_extractor(strategy.model)
        if trained_parameters(extractor, getattr(strategy, "optimizer", None)):
            raise RuntimeError(
                "AnalyticHeadPlugin under torch.distributed: the optimizer trains the feature "
                "extractor, and without DistributedDataParallel every process would train "
                "its own copy on its shard, so the summed statistics would mix features of "
                "different backbones. Add neve.plugins.DDPPlugin() to the strategy's plugins, "
                "or freeze the features (requires_grad_(False))"
            )

    @torch.no_grad()
    def after_training_exp(self, strategy, **kwargs) -> None:
        """Add the experience's (or, for JointTraining, the joint) training data, whole."""
        model = strategy.model
        self.feature_extractor(model)  # contract check before any work
        self._warn_if_trainable(strategy)
        data = training_data(strategy)
        if getattr(data, "targets", None) is not None:
            check_labels(data.targets, "the experience's targets (labels)")
        was_training = model.training
        model.eval()
        batch = self.batch_size or strategy.eval_mb_size or 256
        built = self.head is None
        try:
            self._fit(strategy, data, int(batch))
        except BaseException:
            if built:  # nothing was fitted before: no head at all
                self.buffer = self.head = None
            raise
        finally:
            model.train(was_training)

    def _batches(self, strategy, data, batch: int):
        """``(features, targets)`` batches; under ``torch.distributed`` this process's exact
        shard (:func:`~neve.models.core.distributed.equal_batches`: every item once over all
        processes, the same number of batches on each, as the head's all-reduce needs)."""
        def fn(x):
            return self._features(strategy, x)

        if not is_distributed():
            yield from iter_features(fn, data, batch, strategy.device, progress=False)
            return
        for idx in equal_batches(len(data), batch):
            yield from iter_features(fn, Subset(data, idx), len(idx), strategy.device,
                                     progress=False)

    def _fit(self, strategy, data, batch: int) -> None:
        batches = self._batches(strategy, data, batch)
        feats, y = next(batches, (None, None))
        if feats is None:
            return
        if self.head is None:
            self._build(feats.shape[1], torch.device(strategy.device))
        self.buffer.to(strategy.device)
        self.head.to(strategy.device)
        with self.head.atomic():
            self.head.partial_fit(self.buffer(feats), y)
            for feats, y in batches:
                self.head.partial_fit(self.buffer(feats), y)

    @torch.no_grad()
    def after_eval_forward(self, strategy, **kwargs) -> None:
        if self.head is None or self.head.num_classes == 0:
            return
        self.buffer.to(strategy.device)
        self.head.to(strategy.device)
        logits = self.head(self.buffer(self._features(strategy, strategy.mb_x))).float()
        width = max(strategy.mb_output.shape[1], logits.shape[1])
        if width > logits.shape[1]:
            fill = logits.min(dim=1, keepdim=True).values - 1.0
            logits = torch.cat([logits, fill.expand(-1, width - logits.shape[1])], dim=1)
        strategy.mb_output = logits
