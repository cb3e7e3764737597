"""SupervisedTemplate subclasses of neve."""

from .analytic import AnalyticCIL
from .episodic import (
    RecentSetsBuffer,
    episode_evaluator,
    paper_replay_settings,
    pretrain_tune,
    tune_network,
)
from .nearest_prototype import NearestPrototype
from .slca import SLCA

__all__: list[str] = [
    "AnalyticCIL",
    "NearestPrototype",
    "RecentSetsBuffer",
    "SLCA",
    "episode_evaluator",
    "paper_replay_settings",
    "pretrain_tune",
    "tune_network",
]
