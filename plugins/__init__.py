"""Avalanche plugins of neve, and checkpointing that works under current torch."""

from neve.plugins.checkpoint import (
    maybe_load_checkpoint,
    restore_submodule_attributes,
    save_checkpoint,
)
from neve.plugins.slca import (
    ClassGaussianStats,
    ClassifierAlignmentPlugin,
    SlowLearnerPlugin,
)

restore_submodule_attributes()

__all__ = [
    "ClassGaussianStats",
    "ClassifierAlignmentPlugin",
    "SlowLearnerPlugin",
    "maybe_load_checkpoint",
    "restore_submodule_attributes",
    "save_checkpoint",
]
