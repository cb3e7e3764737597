"""Re-training a classifier on features sampled from class Gaussians (SLCA Sec. 4.2, Eq. 3).

The math of SLCA's classifier alignment, pure functions on a head ``nn.Module``
(``[B, D]`` features to ``[B, C]`` logits); the Avalanche wiring is
:class:`neve.plugins.ClassifierAlignmentPlugin`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .core.checks import Instance, Int, Real, validated
from .drift import shrink_factors
from .gaussians import ClassGaussianStats

#: The constraints of the alignment's hyper-parameters (also the plugin's).
ALIGNMENT = {
    "samples_per_class": Int(1), "epochs": Int(0), "lr": Real(gt=0.0),
    "temperature": Real(gt=0.0), "batch_size": Int(1), "momentum": Real(ge=0.0),
    "weight_decay": Real(ge=0.0),
}


def alignment_batch_size(
    num_samples: int, batch_size: int | None, min_steps: int, largest: int = 256
) -> int:
    """The alignment mini-batch for an epoch of ``num_samples`` sampled features.

    ``batch_size`` when given (the authors' setting: 256). None: ``largest`` (the
    authors' 256) made smaller so that the epoch has at least ``min_steps`` SGD
    steps, ``min(largest, max(1, num_samples // min_steps))``; then
    ``ceil(num_samples / b) >= min_steps`` unless ``num_samples < min_steps``
    (one sample a step). All counts are integers >= 1.
    """
    if batch_size is not None:
        return batch_size
    return min(largest, max(1, num_samples // min_steps))


@torch.no_grad()
def restore_leading_slices(module: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Copy ``state`` into ``module``'s parameters and buffers, in place.

    A tensor that has grown since ``state`` was taken (e.g. an
    ``IncrementalClassifier`` expanded during evaluation) gets ``state``'s values
    in its leading slice; the rest keeps its current values.
    """
    current = dict(module.state_dict(keep_vars=True))
    missing = sorted(set(state) - set(current))
    if missing:
        raise ValueError(f"the head has no entries {missing} to restore")
    for key, saved in state.items():
        target = current[key]
        if saved.dim() != target.dim() or any(
            a > b for a, b in zip(saved.shape, target.shape, strict=True)
        ):
            raise ValueError(
                f"cannot restore {key}: saved shape {tuple(saved.shape)}, "
                f"current {tuple(target.shape)}"
            )
        target[tuple(slice(0, n) for n in saved.shape)].copy_(saved)


def normalised_logits(
    logits: torch.Tensor, groups: torch.Tensor, temperature: float, eps: float = 1e-7
) -> torch.Tensor:
    """Logit normalisation of SLCA's classifier alignment (paper Eq. 3).

    ``logits / (norm * temperature)`` where ``norm`` is, per row, the mean over
    experiences of the L2 norm of that experience's block of logits (the
    authors' code; with one experience it is the plain L2 norm of the row).

    Args:
        logits: ``[B, K]`` logits of the K classes seen so far.
        groups: ``[K]`` experience index of each column.
        temperature: tau > 0 (paper 0.1).
    """
    norms = [
        logits[:, groups == g].norm(p=2, dim=1, keepdim=True) + eps
        for g in torch.unique(groups).tolist()
    ]
    norm = torch.cat(norms, dim=1).mean(dim=1, keepdim=True)
    return logits / norm / temperature


@validated(**ALIGNMENT, generator=Instance(torch.Generator))
def align_head(
    head: nn.Module,
    stats: ClassGaussianStats,
    *,
    samples_per_class: int,
    epochs: int,
    lr: float,
    temperature: float,
    batch_size: int,
    momentum: float,
    weight_decay: float,
    generator: torch.Generator,
    device: str | torch.device,
    logit_norm: bool = True,
    shrink: bool = False,
) -> list[float]:
    """Re-train ``head`` on features sampled from the class Gaussians (SLCA Sec. 4.2).

    Each epoch draws ``samples_per_class`` features per stored class
    (:meth:`ClassGaussianStats.sample`), shuffles them and runs SGD (momentum,
    weight decay, lr cosine-annealed to 0 over the epochs) in mini-batches on the
    cross-entropy of the logits of the stored classes, normalised by
    :func:`normalised_logits` (Eq. 3) when ``logit_norm``. Only ``head``'s
    parameters get gradients; its train/eval mode is restored afterwards.

    Args:
        head: maps ``[B, D]`` features to logits ``[B, K']`` with ``K'`` above every
            stored class id.
        stats: the class Gaussians; ``stats.groups`` gives each class's experience.
        samples_per_class: features drawn per class per epoch.
        epochs: passes over freshly drawn features; 0 leaves the head as it is.
        lr: initial SGD learning rate, cosine-annealed to 0 over the epochs.
        temperature: tau of Eq. 3.
        batch_size: SGD mini-batch.
        momentum, weight_decay: of the SGD.
        generator: CPU generator for the sampling and the shuffling.
        device: where the head and the sampled features are.
        logit_norm: use Eq. 3's normalisation (True) or plain logits.
        shrink: the authors' code (not the paper): sample class c around
            ``s_c mu_c``, ``s_c = 0.9 + 0.1 (t_c + 1) / (T + 1)``
            (:func:`neve.models.drift.shrink_factors`, T the latest stored group).

    Returns:
        The mean loss of each epoch.
    """
    if not stats.classes:
        raise ValueError("stats must hold at least one class, got none stored")
    classes = stats.classes
    class_ids = torch.tensor(classes, dtype=torch.long, device=device)
    groups = torch.tensor([stats.groups[c] for c in classes], device=device)
    position = {c: i for i, c in enumerate(classes)}
    factors = stats.sampler_factors()
    offsets = None
    if shrink:
        scale = shrink_factors([stats.groups[c] for c in classes], max(stats.groups.values()))
        offsets = torch.stack([(s - 1.0) * stats.means[c] for s, c in zip(scale, classes,
                                                                          strict=True)])
        offsets = offsets.to(device, torch.float32)
    params = list(head.parameters())
    optimizer = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    was_training = head.training
    head.train()
    losses = []
    for _ in range(epochs):
        x, y = stats.sample(samples_per_class, generator, classes, factors, device)
        target = torch.tensor([position[c] for c in y.tolist()], device=device)
        if offsets is not None:
            x = x + offsets[target]
        order = torch.randperm(x.shape[0], generator=generator).to(device)
        x, target = x[order], target[order]
        total = 0.0
        for start in range(0, x.shape[0], batch_size):
            xb, tb = x[start : start + batch_size], target[start : start + batch_size]
            logits = head(xb).index_select(1, class_ids)
            if logit_norm:
                logits = normalised_logits(logits, groups, temperature)
            loss = F.cross_entropy(logits, tb)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item() * xb.shape[0]
        scheduler.step()
        losses.append(total / x.shape[0])
    head.train(was_training)
    return losses

