"""Batch-norm running statistics while a representation is fine-tuned slowly.

A batch-norm layer (Ioffe & Szegedy, ICML 2015, Alg. 1) normalises with the
mini-batch's statistics in train mode and with its running estimates in eval
mode, and in train mode it moves the running estimates towards each batch's,

    r <- (1 - m) r + m s_batch        (torch's rule; ``s`` the mean and the unbiased variance)

at ``m = momentum`` whatever the learning rate. The functions here change that
while SLCA's slow learner trains:

* :func:`scale_norm_momentum` / :func:`restore_norm_momentum`: multiply ``m``
  (train-mode normalisation kept);
* :func:`attach_slow_running_stats`: for layers kept in eval mode (they normalise
  with the running statistics, as in evaluation), a forward hook takes each
  batch's statistics, and after the backward pass the running statistics move
  towards them at ``m * factor``; the batch statistics never enter the forward.
  The hooks act only while their :class:`SlowRunningStats` is ``active``. Each
  process moves its own buffers; under ``DistributedDataParallel`` (buffers
  broadcast from rank 0 at each forward) they follow rank 0's batches.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


def batch_norm_layers(model: nn.Module, exclude: nn.Module) -> list[_BatchNorm]:
    """The batch-norm layers of ``model`` outside ``exclude`` that keep running statistics."""
    skip = set(exclude.modules())
    return [m for m in model.modules()
            if isinstance(m, _BatchNorm) and m not in skip and m.track_running_stats]


def scale_norm_momentum(
    model: nn.Module, exclude: nn.Module, factor: float
) -> dict[nn.Module, float | None]:
    """Multiply the ``momentum`` of ``model``'s batch-norm layers (outside ``exclude``).

    Scaled by the slow learner's factor, the running mean and variance drift as
    slowly as the weights (``factor=0`` freezes them). Layers with
    ``momentum=None`` (cumulative average) are left as they are.

    Returns:
        The layers changed and their previous momentum, for :func:`restore_norm_momentum`.
    """
    changed: dict[nn.Module, float | None] = {}
    for module in batch_norm_layers(model, exclude):
        if module.momentum is not None:
            changed[module] = module.momentum
            module.momentum = module.momentum * factor
    return changed


def restore_norm_momentum(changed: dict[nn.Module, float | None]) -> None:
    """Undo :func:`scale_norm_momentum`."""
    for module, momentum in changed.items():
        module.momentum = momentum


def batch_moments(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and unbiased variance of ``x`` ``[N, C, *]``, each ``[C]`` (float32+).

    The statistics a batch-norm layer computes in train mode (Alg. 1), over every
    dimension but the channel one. Precondition: at least two values per channel.
    """
    dims = [0, *range(2, x.dim())]
    values = x.detach().to(torch.promote_types(x.dtype, torch.float32))
    return values.mean(dims), values.var(dims, unbiased=True)


def slow_momentum(layer: _BatchNorm, factor: float) -> float:
    """The layer's update rate times ``factor``: ``momentum * factor``, or, for
    ``momentum=None`` (cumulative average), ``factor / (num_batches_tracked + 1)``."""
    if layer.momentum is not None:
        return layer.momentum * factor
    return factor / (int(layer.num_batches_tracked) + 1)


@torch.no_grad()
def move_running_stats(layer: _BatchNorm, x: torch.Tensor, momentum: float) -> None:
    """``r <- (1 - momentum) r + momentum s_batch`` for the running mean and variance of
    ``layer`` (``s_batch`` from :func:`batch_moments` of its input ``x``); counts the batch.

    In place: not between an eval-mode forward and its backward pass (which reads
    the buffers). A batch with a single value per channel has no variance: nothing moves.
    """
    if x.numel() > x.shape[1]:
        move_running_moments(layer, *batch_moments(x), momentum)


@torch.no_grad()
def move_running_moments(layer: _BatchNorm, mean: torch.Tensor, var: torch.Tensor,
                         momentum: float) -> None:
    """:func:`move_running_stats` from a batch's moments ``[C]`` (:func:`batch_moments`)."""
    layer.running_mean.lerp_(mean.to(layer.running_mean), momentum)
    layer.running_var.lerp_(var.to(layer.running_var), momentum)
    layer.num_batches_tracked.add_(1)


class SlowRunningStats:
    """Forward hooks moving eval-mode batch-norm layers' running statistics slowly.

    Each layer of ``layers`` (in eval mode, so its output uses the running
    statistics) gets a hook that, while :attr:`active` is True, takes the
    :func:`batch_moments` of the layer's input after the output is computed.
    :meth:`commit` (after the backward pass, which reads the running statistics
    the forward used) moves each layer's running statistics by them, in forward
    order, at :func:`slow_momentum` (``factor``). :meth:`detach` removes the hooks.
    """

    def __init__(self, layers: list[_BatchNorm], factor: float) -> None:
        self.factor, self.active = factor, False
        self._pending: list[tuple[_BatchNorm, torch.Tensor, torch.Tensor]] = []
        self._handles = [layer.register_forward_hook(self._hook) for layer in layers]

    def _hook(self, layer: _BatchNorm, inputs: tuple, output: torch.Tensor) -> None:
        x = inputs[0]
        if self.active and x.numel() > x.shape[1]:
            self._pending.append((layer, *batch_moments(x)))

    def commit(self) -> None:
        """Move the running statistics by the batches seen since the last commit."""
        for layer, mean, var in self._pending:
            move_running_moments(layer, mean, var, slow_momentum(layer, self.factor))
        self._pending = []

    def detach(self) -> None:
        """Remove the hooks and drop uncommitted batches (idempotent)."""
        for handle in self._handles:
            handle.remove()
        self._handles, self._pending, self.active = [], [], False


def attach_slow_running_stats(model: nn.Module, exclude: nn.Module,
                              factor: float) -> SlowRunningStats:
    """:class:`SlowRunningStats` on :func:`batch_norm_layers` of ``model`` outside ``exclude``."""
    return SlowRunningStats(batch_norm_layers(model, exclude), factor)
