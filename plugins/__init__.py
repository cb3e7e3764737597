"""Avalanche plugins of neve, and checkpointing that works under current torch."""

from ..models.gaussians import ClassGaussianStats
from .alignment import ClassifierAlignmentPlugin
from .analytic import AnalyticHeadPlugin
from .checkpoint import (
    CheckpointError,
    maybe_load_checkpoint,
    restore_submodule_attributes,
    save_checkpoint,
)
from .curriculum_metrics import (
    CurriculumEffectiveness,
    curriculum_effectiveness,
    effectiveness_f,
)
from .distributed import DDPPlugin, ExactShardsPlugin, GlobalBatchPlugin, WholeEvaluationPlugin
from .online_metrics import AnytimeAccuracy, LastAccuracy, SeenClassesEvaluation
from .process_group import init_distributed
from .progress import PhaseProgressLogger
from .seen_classes import seen_classes_stream
from .slow_learner import SlowLearnerPlugin

restore_submodule_attributes()

__all__ = [
    "AnalyticHeadPlugin",
    "DDPPlugin",
    "ExactShardsPlugin",
    "GlobalBatchPlugin",
    "WholeEvaluationPlugin",
    "init_distributed",
    "CurriculumEffectiveness",
    "AnytimeAccuracy",
    "LastAccuracy",
    "SeenClassesEvaluation",
    "seen_classes_stream",
    "PhaseProgressLogger",
    "curriculum_effectiveness",
    "effectiveness_f",
    "ClassGaussianStats",
    "ClassifierAlignmentPlugin",
    "SlowLearnerPlugin",
    "CheckpointError",
    "maybe_load_checkpoint",
    "restore_submodule_attributes",
    "save_checkpoint",
]
