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
from .slca import SLCA, paper_slca
from .slca_settings import PAPER_SETTINGS, SLCASettings

__all__: list[str] = [
    "AnalyticCIL",
    "NearestPrototype",
    "RecentSetsBuffer",
    "PAPER_SETTINGS",
    "SLCA",
    "SLCASettings",
    "paper_slca",
    "episode_evaluator",
    "paper_replay_settings",
    "pretrain_tune",
    "tune_network",
]
