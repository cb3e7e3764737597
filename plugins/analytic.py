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

from collections.abc import Callable

import torch
from avalanche.core import SupervisedPlugin
from torch import nn

from ..models.analytic import BufferLayer, RecursiveLeastSquares
from ..models.classifier import model_part
from ..models.features import iter_features


class AnalyticHeadPlugin(SupervisedPlugin):
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

    Raises:
        ValueError: when the model has no such sub-module, or its output is not
            ``[n, d]`` features (at the first use).
    """

    def __init__(
        self,
        buffer_size: int = 4096,
        *,
        gamma: float = 1.0,
        features: str | Callable[[torch.Tensor], torch.Tensor] | None = None,
        seed: int = 0,
        batch_size: int | None = None,
        projection_dtype: torch.dtype = torch.float64,
    ) -> None:
        super().__init__()
        if int(buffer_size) < 1:
            raise ValueError(f"buffer_size must be >= 1, got {buffer_size}")
        RecursiveLeastSquares(1, gamma)  # validates gamma
        BufferLayer(1, 1, projection_dtype=projection_dtype)  # validates projection_dtype
        if features is not None and not (isinstance(features, str) or callable(features)):
            raise ValueError(
                f"features must be None, an attribute name or a callable, got {type(features)}"
            )
        if batch_size is not None and int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.buffer_size = int(buffer_size)
        self.gamma = float(gamma)
        self.features = features
        self.seed = int(seed)
        self.batch_size = batch_size
        self.projection_dtype = projection_dtype
        self.buffer: BufferLayer | None = None
        self.head: RecursiveLeastSquares | None = None

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
        self.head = RecursiveLeastSquares(self.buffer_size, self.gamma).to(device)

    # -- hooks -------------------------------------------------------------------------
    @torch.no_grad()
    def after_training_exp(self, strategy, **kwargs) -> None:
        model = strategy.model
        self.feature_extractor(model)  # contract check before any work
        was_training = model.training
        model.eval()
        batch = self.batch_size or strategy.eval_mb_size or 256
        data = strategy.experience.dataset.eval()
        try:
            for feats, y in iter_features(
                lambda x: self._features(strategy, x), data, int(batch), strategy.device,
                progress=False,
            ):
                if self.head is None:
                    self._build(feats.shape[1], torch.device(strategy.device))
                self.buffer.to(strategy.device)
                self.head.to(strategy.device)
                self.head.partial_fit(self.buffer(feats), y)
        finally:
            model.train(was_training)

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
