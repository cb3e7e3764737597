"""ACIL / G-ACIL as an Avalanche strategy that learns without gradients.

Zhuang et al., "ACIL: Analytic Class-Incremental Learning with Absolute
Memorization and Privacy Protection" (NeurIPS 2022) and "G-ACIL: Analytic
Learning for Exemplar-Free Generalized Class Incremental Learning" (2024).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from avalanche.training.plugins import EvaluationPlugin
from avalanche.training.plugins.evaluation import default_evaluator
from avalanche.training.templates.base import BasePlugin
from torch import nn

from ..models.analytic import AnalyticClassifier
from ..models.core.checks import Bool, Device, Int, Real, Seed, validated
from ..models.core.distributed import is_distributed
from ..models.incremental_ridge import DEFAULT_MAX_CLASSES
from .closed_form import ClosedFormStrategy


class AnalyticCIL(ClosedFormStrategy):
    """Analytic class-incremental learning: frozen backbone, random buffer, closed-form head.

    Each training mini-batch goes through the frozen backbone and the buffer layer
    and is added to the ridge statistics (:class:`neve.models.IncrementalRidge`);
    no gradient is computed and nothing is stored but ``sum X^T X`` and ``sum X^T Y``.
    After any number of experiences, the head equals the ridge solution on all data
    seen (ACIL eq. 6), so the order of classes, their recurrence (blurry / generalized
    streams, G-ACIL) and the mini-batch size (1 in online streams) do not change it.
    The skeleton (no optimizer, one pass, exact shards under several processes,
    whole evaluation, refused plugins, all-or-nothing experiences) is
    :class:`~neve.strategies.closed_form.ClosedFormStrategy`'s.

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
            (ACIL's base phase), then freeze the backbone and fit the head. Not
            under several processes (each would train its own backbone).
        base_lr: learning rate of that SGD (momentum 0.9).
        buffer_seed: seed of the buffer layer's random weights.
        method: ``"accumulate"`` (default) or ``"woodbury"``, see
            :class:`neve.models.IncrementalRidge`.
        projection_dtype: precision of the buffer layer's product, ``torch.float64``
            (default) or ``torch.float32`` (faster), see :class:`neve.models.BufferLayer`.
        train_predictions: if True, each training mini-batch's ``mb_output`` is the
            head's prediction *before* the batch is learned (one linear solve per
            mini-batch: slow for large buffers). If False (default), ``mb_output``
            is zero logits, so training-time accuracy metrics are meaningless;
            evaluation is unaffected.
        criterion: loss reported by the metrics (no gradient is taken).
        train_mb_size, train_epochs, eval_mb_size, device, plugins, evaluator, eval_every: as
            ``SupervisedTemplate`` (``train_epochs`` must be 1).
        max_classes: largest class count of the head (labels ``>= max_classes``
            are refused), see :class:`neve.models.IncrementalRidge`.

    An experience is learned whole or not at all: when any batch is refused (NaN,
    bad labels, overflow), when ``A + gamma I`` cannot be factorised at its end
    (too small a ``gamma``), or when the strategy was fed another number of
    samples than the experience holds (a plugin replacing the data loader), the
    head, the backbone and ``base_trained`` are put back as they were.

    Every argument is keyword-only, as in Avalanche's strategies:
    ``AnalyticCIL(backbone=nn.Identity(), feature_dim=1280, buffer_size=4096)``.
    """

    checkpointed = ("train_mb_size", "eval_mb_size", "base_epochs", "base_lr",
                    "train_predictions")

    @validated(base_epochs=Int(0), base_lr=Real(gt=0.0), train_predictions=Bool(),
               buffer_seed=Seed(), train_mb_size=Int(1), eval_mb_size=Int(1), device=Device())
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
        model = AnalyticClassifier(backbone, feature_dim, buffer_size=buffer_size, gamma=gamma,
                                   seed=buffer_seed, method=method,
                                   projection_dtype=projection_dtype, max_classes=max_classes)
        super().__init__(model=model, criterion=criterion or nn.CrossEntropyLoss(),
                         train_mb_size=train_mb_size, train_epochs=train_epochs,
                         eval_mb_size=eval_mb_size, device=device, plugins=plugins,
                         evaluator=evaluator, eval_every=eval_every, **base_kwargs)
        self.base_epochs, self.base_lr = base_epochs, base_lr
        self.train_predictions = train_predictions
        self.base_trained = base_epochs == 0
        self._freeze_backbone()

    @property
    def head(self):
        """The :class:`~neve.models.IncrementalRidge` head."""
        return self.model.head

    @property
    def label_cap(self) -> tuple[int, str]:
        return self.head.max_classes, "max_classes"

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

    # -- the closed-form learner ------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"base_trained": self.base_trained}

    def load_state_dict(self, state: dict) -> None:
        self.base_trained = Bool().check(state["base_trained"], "state's base_trained")

    def snapshot(self) -> tuple:
        """The head's buffers, ``base_trained`` and, before the base phase, the backbone."""
        backbone = None if self.base_trained else {
            k: v.clone() for k, v in self.model.backbone.state_dict().items()}
        return ({k: v.clone() for k, v in self.head._buffers.items()}, self.base_trained,
                backbone)

    def restore(self, snapshot: tuple) -> None:
        head, self.base_trained, backbone = snapshot
        self.head._buffers.update(head)
        self.head._solved = None
        if backbone is not None:
            self.model.backbone.load_state_dict(backbone)
            self._freeze_backbone()

    def before_absorbing(self) -> None:
        if not self.base_trained:
            self._base_training()
        self.model.eval()

    def absorb(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The batch's buffer features added to the ridge statistics (ACIL eq. 6)."""
        buffered = self.model.buffer(self.model.features(x))
        if self.train_predictions and self.head.num_classes > 0:
            scores = self.head(buffered).float()
        else:
            scores = torch.zeros(len(y), max(1, self.head.num_classes), device=self.device)
        self.head.partial_fit(buffered, y, self.reduction)
        return scores

    def finish_experience(self) -> None:
        """Refuse an ``A + gamma I`` that cannot be factorised (naming ``gamma``)."""
        self.head.check_solvable()

    def _base_training(self) -> None:
        """ACIL's base phase: SGD + cross-entropy on backbone + temporary linear head."""
        if is_distributed():
            raise RuntimeError(
                "AnalyticCIL's base phase (base_epochs > 0) does not run under "
                "torch.distributed: each process would train its own backbone on its shard, "
                "and the summed statistics would mix features of different backbones. Train "
                "the base phase in one process (or with DDP), then pass the trained backbone "
                "with base_epochs=0")
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
                loss_fn(temp_head(self.model.features(x)), y).backward()
                optimizer.step()
        self._freeze_backbone()
        self.base_trained = True
