"""A pretrained feature extractor with an Avalanche incremental head: neve's model contract.

The model contract
------------------
neve's plugins that treat the representation and the classifier differently
(:class:`~neve.plugins.SlowLearnerPlugin`, :class:`~neve.plugins.ClassifierAlignmentPlugin`,
the analytic head) find them by attribute name on the strategy's model:

* ``model.features``: an ``nn.Module`` mapping what the model receives (a batch
  of the dataset's inputs) to feature vectors ``[B, D]``;
* ``model.classifier``: an ``nn.Module`` mapping ``[B, D]`` features to logits
  ``[B, C]`` (typically Avalanche's ``IncrementalClassifier``, which grows as new
  classes appear);
* ``model(x) == model.classifier(model.features(x))``.

The plugins take the attribute names as arguments (``features=``, ``head=``),
so any model with two such submodules fits; a model without them gets a
``ValueError`` naming the missing attribute. :class:`PretrainedClassifier` is
the ready-made model that meets the contract.
"""

from __future__ import annotations

import torch
from avalanche.models import IncrementalClassifier, MultiTaskModule
from torch import nn

from .core.checks import Bool, Instance, Int, validated


class PretrainedClassifier(nn.Module):
    """``classifier(features(x))`` with an Avalanche ``IncrementalClassifier`` head.

    Args:
        backbone: maps (preprocessed) images to ``[B, feature_dim]`` features, e.g.
            :func:`neve.models.pretrained_backbone`; any ``nn.Module`` works.
        num_classes: the head's initial number of outputs; the head grows when an
            experience brings a class id ``>= num_classes`` (Avalanche's model
            adaptation), and units of classes not yet trained on are masked.
        feature_dim: the feature size; default ``backbone.feature_dim``.
        preprocess: if True, ``backbone.transform`` (e.g. resize + normalise of
            :class:`~neve.models.ImagePreprocess`) runs inside the model, so raw
            dataset images work; then ``features`` is
            ``nn.Sequential(backbone.transform, backbone)``. If False (default),
            ``features`` is the backbone itself and inputs must be preprocessed.
        masking: passed to ``IncrementalClassifier`` (mask logits of unseen classes).

    Attributes:
        features: the feature extractor (see the module docstring's contract).
        classifier: the ``IncrementalClassifier`` head.
        feature_dim: the feature size.
    """

    @validated(backbone=Instance(nn.Module, what="an nn.Module"), num_classes=Int(1),
               feature_dim=Int(1, optional=True), preprocess=Bool(), masking=Bool())
    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int = 2,
        feature_dim: int | None = None,
        preprocess: bool = False,
        masking: bool = True,
    ) -> None:
        super().__init__()
        if feature_dim is None:
            feature_dim = Int(1, optional=True).check(getattr(backbone, "feature_dim", None),
                                                      "backbone.feature_dim")
            if feature_dim is None:
                raise ValueError(
                    "feature_dim must be given when the backbone has no .feature_dim attribute"
                )
        if preprocess:
            transform = getattr(backbone, "transform", None)
            if not isinstance(transform, nn.Module):
                raise ValueError(
                    "preprocess=True needs a backbone with a .transform nn.Module "
                    "(e.g. neve.models.pretrained_backbone())"
                )
            self.features = nn.Sequential(transform, backbone)
        else:
            self.features = backbone
        self.feature_dim = feature_dim
        self.classifier = IncrementalClassifier(
            self.feature_dim, initial_out_features=num_classes, masking=masking
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def model_part(model: nn.Module, name: str, what: str) -> nn.Module:
    """``model.<name>`` (dotted names allowed) by the model contract, or a ValueError.

    Args:
        model: the strategy's model.
        name: attribute path, e.g. ``"features"`` or ``"classifier"``.
        what: what the part is for (``"feature extractor"``, ``"head"``), for the error.

    A model wrapped in ``DistributedDataParallel`` or ``DataParallel`` is looked up
    inside its wrapper.
    """
    if isinstance(model, nn.parallel.DistributedDataParallel | nn.DataParallel):
        model = model.module  # the contract is the wrapped model's
    try:
        module = model.get_submodule(name)
    except AttributeError:
        raise ValueError(
            f"the model ({type(model).__name__}) has no submodule {name!r} for the {what}; "
            "neve's model contract: model.features maps inputs to feature vectors and "
            "model.classifier maps features to logits (see neve.models.PretrainedClassifier), "
            "or pass the attribute names to the plugin"
        ) from None
    return module


def check_single_head(head: nn.Module, name: str = "classifier") -> None:
    """Refuse a multi-head (task-incremental) head: SLCA's alignment is single-head."""
    if isinstance(head, MultiTaskModule):
        raise ValueError(
            f"SLCA's classifier alignment supports single-head class-incremental models "
            f"only: model.{name} is a {type(head).__name__} (a MultiTaskModule, one head per "
            "task). Use a single head, e.g. avalanche.models.IncrementalClassifier or "
            "neve.models.PretrainedClassifier"
        )


@torch.no_grad()
def init_class_rows(head: nn.Module, classes: list[int], std: float,
                    generator: torch.Generator) -> None:
    """Re-draw the head rows of ``classes`` (its last ``nn.Linear``): weight ~ TN(0, std), bias 0.

    The SLCA authors give each task a new linear head with ``trunc_normal_(std=0.02)``
    weights and zero bias; with Avalanche's single ``IncrementalClassifier``
    matrix, this draws the new classes' rows the same way (truncated at +-2, as
    ``torch.nn.init.trunc_normal_``'s default), ``[len(classes), D]`` in the
    order given, from ``generator``.
    """
    linears = [m for m in head.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError("head_init needs an nn.Linear in the head, found none")
    linear = linears[-1]
    if classes and max(classes) >= linear.out_features:
        raise ValueError(f"head has {linear.out_features} outputs, classes {classes} need more")
    rows = torch.empty(len(classes), linear.in_features)
    torch.nn.init.trunc_normal_(rows, std=std, generator=generator)
    index = torch.tensor(classes, dtype=torch.long, device=linear.weight.device)
    linear.weight.index_copy_(0, index, rows.to(linear.weight))
    if linear.bias is not None:
        linear.bias.index_fill_(0, index, 0.0)
