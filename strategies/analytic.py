"""ACIL / G-ACIL as an Avalanche strategy that learns without gradients.

Zhuang et al., "ACIL: Analytic Class-Incremental Learning with Absolute
Memorization and Privacy Protection" (NeurIPS 2022) and "G-ACIL: Analytic
Learning for Exemplar-Free Generalized Class Incremental Learning" (2024).
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from avalanche.training.plugins import EvaluationPlugin
from avalanche.training.plugins.evaluation import default_evaluator
from avalanche.training.templates import SupervisedTemplate
from avalanche.training.templates.base import BasePlugin
from torch import nn

from ..models.analytic import AnalyticClassifier
from ..models.distributed import is_distributed
from ..models.recursive_least_squares import DEFAULT_MAX_CLASSES
from ..plugins.distributed import ExactShardsPlugin
from .arguments import check_device, check_int, check_number
from .gradient_free import check_exemplar_free, check_gradient_free


class AnalyticCIL(SupervisedTemplate):
    """Analytic class-incremental learning: frozen backbone, random buffer, closed-form head.

    Each training mini-batch goes through the frozen backbone and the buffer layer
    and is added to the ridge statistics (:class:`neve.models.RecursiveLeastSquares`);
    no gradient is computed and nothing is stored but ``sum X^T X`` and ``sum X^T Y``.
    After any number of experiences, the head equals the ridge solution on all data
    seen (ACIL eq. 6), so the order of classes, their recurrence (blurry / generalized
    streams, G-ACIL) and the mini-batch size (1 in online streams) do not change it.
    The pattern is Avalanche's ``StreamingLDA``.

    Backbone input: the backbone receives exactly what the dataset yields. On
    precomputed features pass ``backbone=nn.Identity()``; on raw images either put
    the preprocessing in the dataset's transform (e.g. ``backbone.transform`` of
    :func:`neve.models.pretrained_backbone`) or pass a backbone that preprocesses,
    e.g. ``nn.Sequential(backbone.transform, backbone)``.

    Args:
        backbone: ``nn.Module`` mapping a batch of inputs to ``[n, feature_dim]``.
        feature_dim: the backbone's output size (checked on every batch).
        buffer_size: size of the random ReLU buffer layer (ACIL's "buffer").
        gamma: ridge strength (> 0).
        base_epochs: if > 0, first train backbone + a temporary linear head with
            SGD and cross-entropy on the first experience for this many epochs
            (ACIL's base phase), then freeze the backbone and fit the head.
        base_lr: learning rate of that SGD (momentum 0.9).
        buffer_seed: seed of the buffer layer's random weights.
        method: ``"accumulate"`` (default) or ``"woodbury"``, see
            :class:`neve.models.RecursiveLeastSquares`.
        projection_dtype: precision of the buffer layer's product, ``torch.float64``
            (default) or ``torch.float32`` (faster), see :class:`neve.models.BufferLayer`.
        train_predictions: if True, each training mini-batch's ``mb_output`` is the
            head's prediction *before* the batch is learned (one linear solve per
            mini-batch: slow for large buffers). If False (default), ``mb_output``
            is zero logits, so training-time accuracy metrics are meaningless;
            evaluation is unaffected.
        criterion: loss reported by the metrics (no gradient is taken).
        train_mb_size, eval_mb_size, device, plugins, evaluator, eval_every:
            as ``SupervisedTemplate``.
        train_epochs: fixed to 1 (a ValueError otherwise): one closed-form pass;
            a second would count the data twice.
        max_classes: largest class count of the head (labels ``>= max_classes``
            are refused), see :class:`neve.models.RecursiveLeastSquares`.

    An experience is learned whole or not at all: when any batch is refused (NaN,
    bad labels, overflow), when ``A + gamma I`` cannot be factorised at its end
    (too small a ``gamma``), or when the strategy was fed another number of
    samples than the experience holds (a plugin replacing the data loader), the
    head, the backbone and ``base_trained`` are put back as they were and the
    error goes on. An experience without training samples is a ValueError.

    Refused plugins, at construction: those that need gradients
    (:mod:`neve.strategies.gradient_free`: EWC, LwF, SI, MAS, ...) and those that
    replay stored samples (``ReplayPlugin``, ``GDumbPlugin``, anything with a
    ``storage_policy``): the method is exemplar-free, and a replayed sample would
    be counted twice.

    Every argument is keyword-only, as in Avalanche's strategies:
    ``AnalyticCIL(backbone=nn.Identity(), feature_dim=1280, buffer_size=4096)``.
    """

    def __init__(
        self,
        *,
        backbone: nn.Module,
        feature_dim: int,
        buffer_size: int = 4096,
        gamma: float = 1.0,
        base_epochs: int = 0,
        base_lr: float = 0.01,
        buffer_seed: int = 0,
        method: str = "accumulate",
        projection_dtype: torch.dtype = torch.float64,
        train_predictions: bool = False,
        criterion: nn.Module | None = None,
        train_mb_size: int = 256,
        train_epochs: int = 1,
        eval_mb_size: int = 1024,
        device: str | torch.device = "cpu",
        plugins: list[BasePlugin] | None = None,
        evaluator: EvaluationPlugin | Callable[[], EvaluationPlugin] = default_evaluator,
        eval_every: int = -1,
        max_classes: int = DEFAULT_MAX_CLASSES,
        **base_kwargs,
    ) -> None:
        check_int(train_mb_size, "train_mb_size", minimum=1)
        check_int(eval_mb_size, "eval_mb_size", minimum=1)
        device = check_device(device)
        check_gradient_free(plugins or [], "AnalyticCIL")
        check_exemplar_free(plugins, "AnalyticCIL")
        plugins = list(plugins or [])
        if not any(isinstance(p, ExactShardsPlugin) for p in plugins):
            # under torch.distributed: disjoint shards without the sampler's padding, so the
            # summed statistics count every sample once (a no-op in one process)
            plugins.append(ExactShardsPlugin())
        if train_epochs != 1:
            raise ValueError(
                f"train_epochs is fixed to 1 in AnalyticCIL, got {train_epochs!r}: the "
                "closed-form fit makes one pass, and a second would count the data twice "
                "(use base_epochs for the gradient-trained base phase)"
            )
        check_int(base_epochs, "base_epochs", minimum=0)
        check_number(base_lr, "base_lr", positive=True)
        model = AnalyticClassifier(
            backbone,
            feature_dim,
            buffer_size=buffer_size,
            gamma=gamma,
            seed=buffer_seed,
            method=method,
            projection_dtype=projection_dtype,
            max_classes=max_classes,
        )
        super().__init__(
            model=model,
            optimizer=None,  # type: ignore[arg-type]
            criterion=nn.CrossEntropyLoss() if criterion is None else criterion,
            train_mb_size=train_mb_size,
            train_epochs=1,
            eval_mb_size=eval_mb_size,
            device=device,
            plugins=plugins,
            evaluator=evaluator,
            eval_every=eval_every,
            **base_kwargs,
        )
        self.base_epochs = int(base_epochs)
        self.base_lr = float(base_lr)
        self.train_predictions = bool(train_predictions)
        self.base_trained = self.base_epochs == 0
        self._freeze_backbone()

    @property
    def head(self):
        """The :class:`~neve.models.RecursiveLeastSquares` head."""
        return self.model.head

    def _freeze_backbone(self) -> None:
        for p in self.model.backbone.parameters():
            p.requires_grad_(False)
        self.model.backbone.eval()

    def criterion(self) -> torch.Tensor:
        """The reported loss; logits of classes not yet learned count as zero."""
        out = self.mb_output
        need = int(self.mb_y.max()) + 1 if self.mb_y.numel() else 0
        if need > out.shape[1]:
            out = torch.cat([out, out.new_zeros(out.shape[0], need - out.shape[1])], dim=1)
        return self._criterion(out, self.mb_y)

    def make_optimizer(self, **kwargs) -> None:
        """No optimizer: the head is solved in closed form."""

    def train_dataset_adaptation(self, **kwargs) -> None:
        """Avalanche's adaptation; an experience without training samples is refused."""
        super().train_dataset_adaptation(**kwargs)
        if len(self.adapted_dataset) == 0:
            raise ValueError(
                f"experience {self.experience.current_experience} has no training samples: "
                "AnalyticCIL learns nothing from it; leave it out of the stream"
            )

    def _train_exp(self, experience, eval_streams=None, **kwargs) -> None:
        """One experience, learned whole or not at all (see the class docstring)."""
        backbone = None if self.base_trained else copy.deepcopy(self.model.backbone.state_dict())
        base_trained = self.base_trained
        try:
            with self.model.head.atomic():
                super()._train_exp(experience, eval_streams, **kwargs)
        except BaseException:
            if backbone is not None:
                self.model.backbone.load_state_dict(backbone)
                self._freeze_backbone()
            self.base_trained = base_trained
            raise

    def _base_training(self) -> None:
        """ACIL's base phase: SGD + cross-entropy on backbone + temporary linear head.

        Raises:
            RuntimeError: under ``torch.distributed`` with several processes.
        """
        if is_distributed():
            raise RuntimeError(
                "AnalyticCIL's base phase (base_epochs > 0) does not run under "
                "torch.distributed: each process would train its own backbone on its shard, "
                "and the summed statistics would mix features of different backbones. Train "
                "the base phase in one process (or with DDP), then pass the trained backbone "
                "with base_epochs=0"
            )
        backbone = self.model.backbone
        num_classes = int(torch.as_tensor(self.experience.dataset.targets).max()) + 1
        temp_head = nn.Linear(self.model.feature_dim, num_classes).to(self.device)
        params = list(backbone.parameters()) + list(temp_head.parameters())
        for p in params:
            p.requires_grad_(True)
        optimizer = torch.optim.SGD(params, lr=self.base_lr, momentum=0.9)
        loss_fn = nn.CrossEntropyLoss()
        backbone.train()
        for _ in range(self.base_epochs):
            for batch in self.dataloader:
                x, y = batch[0].to(self.device), batch[1].to(self.device)
                optimizer.zero_grad()
                loss = loss_fn(temp_head(self.model.features(x)), y)
                loss.backward()
                optimizer.step()
        self._freeze_backbone()
        self.base_trained = True

    def training_epoch(self, **kwargs) -> None:
        """One pass: features of each mini-batch added to the closed-form head."""
        if not self.base_trained:
            self._base_training()
        self.model.eval()
        fitted = 0
        for batch in self.dataloader:
            self.mbatch = batch
            if self._stop_training:
                break
            self._unpack_minibatch()
            self._before_training_iteration(**kwargs)
            self._before_forward(**kwargs)
            with torch.no_grad():
                buffered = self.model.buffer(self.model.features(self.mb_x))
                if self.train_predictions and self.model.head.num_classes > 0:
                    self.mb_output = self.model.head(buffered).float()
                else:
                    width = max(1, self.model.head.num_classes)
                    self.mb_output = torch.zeros(len(self.mb_y), width, device=self.device)
            self._after_forward(**kwargs)
            self.loss = self._make_empty_loss()
            self._before_update(**kwargs)
            self.model.head.partial_fit(buffered, self.mb_y)
            fitted += len(self.mb_y)
            self._after_update(**kwargs)
            self._after_training_iteration(**kwargs)
        expected = len(self.experience.dataset)
        if fitted != expected and not is_distributed():
            raise ValueError(
                f"experience {self.experience.current_experience} holds {expected} training "
                f"samples, but {fitted} were fed to the head (a plugin replaced or stopped "
                "the data loader?): the head must see each sample once, so the experience "
                "is not learned"
            )
