"""SupervisedTemplate subclasses of neve."""

from neve.strategies.analytic import AnalyticCIL
from neve.strategies.episodic import (
    RecentSetsBuffer,
    episode_evaluator,
    paper_replay_settings,
    pretrain_tune,
)
from neve.strategies.nearest_prototype import NearestPrototype
from neve.strategies.slca import SLCA

__all__: list[str] = [
    "AnalyticCIL",
    "NearestPrototype",
    "RecentSetsBuffer",
    "SLCA",
    "episode_evaluator",
    "paper_replay_settings",
    "pretrain_tune",
]
