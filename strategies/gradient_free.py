"""Rules for gradient-free, exemplar-free strategies: refuse plugins they cannot honour.

Issue #11.7 (gradients) and #11.10 (replay).

A gradient-free strategy (no loss to backpropagate, no optimizer) runs
Avalanche's gradient-time callbacks never, so a plugin that works there is a
silent no-op (LwF, SI) or crashes on the missing optimizer (EWC:
``'NoneType' object has no attribute 'zero_grad'``). :func:`check_gradient_free`
refuses such plugins up front with a ValueError naming them.

A plugin needs gradients when its class overrides one of
:data:`GRADIENT_CALLBACKS` (Avalanche 0.6: EWC, LwF, SI, MAS, RWalk, GEM, A-GEM,
LFL, MIR, BiC, RAR, feature distillation, generative replay...), or is one of
:data:`OPTIMIZER_PLUGINS`, which drive the optimizer from other callbacks.
"""

from __future__ import annotations

from collections.abc import Iterable

from avalanche.core import BaseSGDPlugin
from avalanche.evaluation.metric_definitions import PluginMetric
from avalanche.logging import BaseLogger
from avalanche.training.plugins import (
    EWCPlugin,
    FromScratchTrainingPlugin,
    GDumbPlugin,
    GSS_greedyPlugin,
    LRSchedulerPlugin,
    LwFPlugin,
    MASPlugin,
    RWalkPlugin,
    SynapticIntelligencePlugin,
)
from avalanche.training.plugins.evaluation import EvaluationPlugin

GRADIENT_CALLBACKS = ("before_backward", "after_backward", "before_update", "after_update")
# plugins that use the optimizer or the gradients from other callbacks too
OPTIMIZER_PLUGINS = (
    EWCPlugin, LwFPlugin, SynapticIntelligencePlugin, MASPlugin, RWalkPlugin,
    LRSchedulerPlugin, FromScratchTrainingPlugin,
)


# classes whose gradient-time callbacks are no-ops (metrics and loggers inherit them)
_NO_OP_BASES = (BaseSGDPlugin, PluginMetric, BaseLogger)


def _defined_by(cls: type, name: str) -> type | None:
    """The class in ``cls``'s MRO that defines ``name``."""
    for base in cls.__mro__:
        if name in vars(base):
            return base
    return None


def needs_gradients(plugin: object) -> str | None:
    """The reason ``plugin`` needs gradients or an optimizer, or None when it does not."""
    if isinstance(plugin, EvaluationPlugin):
        return None  # forwards every callback to its metrics; none needs gradients
    if isinstance(plugin, OPTIMIZER_PLUGINS):
        return "it regularises or steps the gradients/optimizer"
    for name in GRADIENT_CALLBACKS:
        owner = _defined_by(type(plugin), name)
        if owner is not None and owner not in _NO_OP_BASES:
            return f"it acts in {name}"
    return None


def check_gradient_free(plugins: Iterable[object], strategy: str) -> None:
    """Raise a ValueError naming the first plugin that needs gradients.

    Args:
        plugins: the strategy's plugins.
        strategy: the strategy's name, for the message.
    """
    for plugin in plugins:
        reason = needs_gradients(plugin)
        if reason is not None:
            raise ValueError(
                f"plugins: {type(plugin).__name__} needs gradients ({reason}), but "
                f"{strategy} is gradient-free (no loss, no optimizer); it would crash or "
                "do nothing. Remove it, or use a gradient strategy (e.g. Naive)"
            )


def check_exemplar_free(plugins: Iterable[object] | None, strategy: str) -> None:
    """Refuse plugins that feed stored exemplars (ReplayPlugin and the like) by name.

    A strategy that sums what it is given (AnalyticCIL's closed-form head, ACIL
    eq. 6; NearestPrototype's class sums) would count a replayed sample once more
    per replay and no longer equal its joint solution on the stream's data. Both
    are exemplar-free.
    """
    for plugin in plugins or ():
        if isinstance(plugin, (GDumbPlugin, GSS_greedyPlugin)) or hasattr(
            plugin, "storage_policy"
        ):
            raise ValueError(
                f"plugins: {type(plugin).__name__} replays stored samples, but {strategy} "
                "counts every sample it is given, so replayed samples would be learned twice "
                "and it would no longer equal its solution on the stream's data; it is "
                "exemplar-free: remove the plugin"
            )
