"""The SLCA paper's training settings in one place (Zhang et al., ICCV 2023, Sec. 5.1).

:data:`PAPER_SETTINGS` holds them; :func:`paper_parts` gives the arguments of an
:class:`~neve.strategies.SLCA` from them (also :meth:`SLCA.paper`): SGD with
momentum and weight decay whose head and representation groups are split
before the step-decay scheduler is built (so Avalanche's ``LRSchedulerPlugin``
decays and resets both groups), the slow learner and the classifier alignment.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from avalanche.training.plugins import LRSchedulerPlugin
from torch import nn

from ..models.classifier import model_part
from ..models.core.checks import Instance, validated
from ..plugins.alignment import ClassifierAlignmentPlugin
from ..plugins.slow_learner import SlowLearnerPlugin, split_param_groups


@dataclass(frozen=True)
class SLCASettings:
    """SLCA's settings; the defaults are the paper's (CIFAR-100, ViT-B/16).

    Attributes:
        head_lr: SGD learning rate of the classifier (0.01).
        backbone_lr_scale: the representation's lr is ``head_lr`` times this (0.01).
        momentum, weight_decay: of the SGD (0.9, 5e-4).
        batch_size: training mini-batch (128).
        epochs: training epochs per experience (20 on CIFAR-100).
        lr_milestones: epochs after which the lr is multiplied by ``lr_gamma`` (18).
        lr_gamma: the step decay's factor (0.1).
        alignment_epochs: classifier-alignment epochs (5).
        samples_per_class: features sampled per class per alignment epoch (256).
        alignment_batch_size: alignment mini-batch (256).
        alignment_lr: initial alignment lr, cosine-annealed (0.01).
        temperature: tau of the logit normalisation (0.1).
        norm_stats: :class:`~neve.plugins.SlowLearnerPlugin`'s normalisation
            handling; the paper's ViT has no batch norm, so this is neve's
            default, not the paper's.
    """

    head_lr: float = 0.01
    backbone_lr_scale: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 128
    epochs: int = 20
    lr_milestones: tuple[int, ...] = (18,)
    lr_gamma: float = 0.1
    alignment_epochs: int = 5
    samples_per_class: int = 256
    alignment_batch_size: int = 256
    alignment_lr: float = 0.01
    temperature: float = 0.1
    norm_stats: str = "eval"


PAPER_SETTINGS = SLCASettings()


@validated(model=Instance(nn.Module), settings=Instance(SLCASettings))
def paper_parts(model: nn.Module, settings: SLCASettings = PAPER_SETTINGS, *,
                head: str = "classifier", slow_learner_options: dict | None = None,
                alignment_options: dict | None = None, plugins: list | None = None
                ) -> tuple[dict, LRSchedulerPlugin | None]:
    """The keyword arguments of an :class:`~neve.strategies.SLCA` with ``settings``.

    Args:
        model: a model of neve's contract (``model.features``, ``model.<head>``).
        settings: an :class:`SLCASettings`, e.g. ``dataclasses.replace(PAPER_SETTINGS,
            epochs=3, lr_milestones=())``.
        slow_learner_options, alignment_options: further keyword arguments of the
            two plugins (e.g. ``{"head_init": "trunc_normal"}``, ``{"seed": 1}``).
        plugins: more plugins, after the step-decay ``LRSchedulerPlugin``.

    Returns:
        ``(model, optimizer, train_mb_size, train_epochs, slow_learner, alignment,
        plugins)`` as a dict, and the step-decay scheduler plugin (None without
        milestones). :meth:`neve.strategies.SLCA.paper` builds the strategy.
    """
    if any(isinstance(m, bool) or not isinstance(m, int) or m < 1
           for m in settings.lr_milestones):
        raise ValueError(f"lr_milestones must be epochs >= 1, got {settings.lr_milestones!r}")
    optimizer = torch.optim.SGD(model.parameters(), lr=settings.head_lr,
                                momentum=settings.momentum, weight_decay=settings.weight_decay)
    head_params = list(model_part(model, head, "head").parameters())
    split_param_groups(optimizer, head_params, settings.backbone_lr_scale)
    scheduler = None
    if settings.lr_milestones:
        scheduler = LRSchedulerPlugin(
            torch.optim.lr_scheduler.MultiStepLR(optimizer, list(settings.lr_milestones),
                                                 settings.lr_gamma),
            reset_scheduler=True, reset_lr=True, step_granularity="epoch")
    slow_options = dict({"norm_stats": settings.norm_stats}, **(slow_learner_options or {}))
    slow = SlowLearnerPlugin(settings.backbone_lr_scale, head=head, **slow_options)
    align = ClassifierAlignmentPlugin(
        samples_per_class=settings.samples_per_class, epochs=settings.alignment_epochs,
        lr=settings.alignment_lr, temperature=settings.temperature,
        batch_size=settings.alignment_batch_size, momentum=settings.momentum,
        weight_decay=settings.weight_decay, head=head, **(alignment_options or {}))
    parts = dict(model=model, optimizer=optimizer, train_mb_size=settings.batch_size,
                 train_epochs=settings.epochs, slow_learner=slow, alignment=align,
                 plugins=([scheduler] if scheduler else []) + list(plugins or []))
    return parts, scheduler


__all__ = ["PAPER_SETTINGS", "SLCASettings", "paper_parts"]
