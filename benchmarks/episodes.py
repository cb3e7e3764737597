"""Running learners over few-shot episodes: a fresh strategy per episode, mean accuracy +- 95% CI.

* :func:`run_episodes` trains a new strategy (from a factory) on each episode's
  train stream, evaluates it on the test stream and returns
  :class:`EpisodeResults`.
* :func:`paired_conditions` zips episode generators that share their support sets
  (same seed, different query corruptions) so that each strategy is trained once
  per episode and evaluated under every condition.

Episodes over a frozen backbone's features: :mod:`neve.benchmarks.episode_features`.
"""

from __future__ import annotations

import json
import math
import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass

import numpy as np
import torch
from avalanche.benchmarks.scenarios.generic_scenario import CLScenario
from scipy import stats
from tqdm.auto import tqdm

from ..models.core.checks import Bool, Function, Int, OneOf, Real, validated
from ..models.core.distributed import (
    default_reduction,
    is_distributed,
    rank_and_world,
    working_alone,
)

STREAM_ACCURACY_KEY = "Top1_Acc_Stream/eval_phase/test_stream"


@validated(level=Real(gt=0.0, lt=1.0))
def mean_confidence_interval(values: Iterable[float], level: float = 0.95) -> tuple[float, float]:
    """Mean and half-width of its Student-t confidence interval at ``level``.

    Half-width ``t_{(1+level)/2, n-1} * s / sqrt(n)`` with ``s`` the sample standard
    deviation (ddof=1); 0 for a single value.

    Raises:
        TypeError: ``values`` holds something other than real numbers.
        ValueError: ``values`` is empty or holds NaN/inf; ``level`` not in (0, 1).
    """
    try:
        x = np.asarray(list(values), dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise TypeError(f"values must be real numbers (accuracies), got {values!r}") from err
    if x.ndim != 1:
        raise ValueError(f"values must be a flat sequence of numbers, got shape {x.shape}")
    if x.size == 0:
        raise ValueError("values must not be empty")
    if not np.isfinite(x).all():
        bad = int((~np.isfinite(x)).sum())
        raise ValueError(f"values must be finite, got {bad} NaN or inf of {x.size}")
    if x.size == 1:
        return float(x[0]), 0.0
    half = stats.t.ppf(0.5 + level / 2, x.size - 1) * x.std(ddof=1) / math.sqrt(x.size)
    return float(x.mean()), float(half)


@dataclass
class EpisodeResults:
    """Per-episode accuracies of one learner under one or more conditions.

    Attributes:
        accuracies: condition name -> accuracy of each episode, in episode order.
        seconds: wall time of the whole run (training, evaluation, episode building).
        name: label of the learner.
    """

    accuracies: dict[str, list[float]]
    seconds: float
    name: str = ""

    @property
    def n_episodes(self) -> int:
        return len(next(iter(self.accuracies.values()), []))

    @property
    def episodes_per_second(self) -> float:
        return self.n_episodes / self.seconds if self.seconds > 0 else float("inf")

    def mean(self, condition: str | None = None) -> float:
        return mean_confidence_interval(self.accuracies[self._condition(condition)])[0]

    def ci95(self, condition: str | None = None) -> float:
        """Half-width of the 95% confidence interval of the mean accuracy."""
        return mean_confidence_interval(self.accuracies[self._condition(condition)])[1]

    def _condition(self, condition: str | None) -> str:
        """``condition``, or the only one there is when None."""
        if condition is None and len(self.accuracies) == 1:
            return next(iter(self.accuracies))
        return OneOf(*sorted(self.accuracies)).check(condition, "condition")

    def to_dict(self, per_episode: bool = True) -> dict:
        out = {
            "name": self.name,
            "n_episodes": self.n_episodes,
            "seconds": round(self.seconds, 3),
            "episodes_per_second": round(self.episodes_per_second, 3),
            "conditions": {},
        }
        for cond, accs in self.accuracies.items():
            mean, half = mean_confidence_interval(accs)
            entry = {"mean": round(mean, 4), "ci95": round(half, 4)}
            if per_episode:
                entry["per_episode"] = [round(a, 4) for a in accs]
            out["conditions"][cond] = entry
        return out

    def to_json(self, per_episode: bool = True, **kwargs) -> str:
        return json.dumps(self.to_dict(per_episode), **kwargs)


def paired_conditions(**episodes: Iterable[CLScenario]) -> Iterator[dict[str, CLScenario]]:
    """Zip episode iterables into ``{condition: episode}`` dicts, one per episode.

    Meant for generators built with the same seed and presentation but different
    corruptions, which therefore share their support sets;
    :func:`run_episodes` then trains on the first condition's train stream and
    evaluates under every condition. Raises ValueError if the iterables'
    lengths differ or if two episodes of one dict differ in their support
    labels or source items.
    """
    if not episodes:
        raise ValueError("give at least one condition=episodes")
    iterators = {}
    for name, it in episodes.items():
        try:
            iterators[name] = iter(it)
        except TypeError as err:
            raise TypeError(f"{name} must be an iterable of episodes, got "
                            f"{type(it).__name__}") from err
    while True:
        item = {}
        for name, it in iterators.items():
            try:
                item[name] = next(it)
            except StopIteration:
                if item:
                    raise ValueError("the episode iterables have different lengths") from None
                item = None
                break
        if item is None:
            for it in iterators.values():
                if next(it, None) is not None:
                    raise ValueError("the episode iterables have different lengths")
            return
        _check_same_support(item)
        yield item


def _support_signature(bm: CLScenario) -> tuple:
    sig = [len(bm.train_stream)]
    for name in ("source_indices", "support_indices"):
        value = getattr(bm, name, None)
        if value is not None:
            sig.append(tuple(torch.as_tensor(value).tolist()))
    return tuple(sig)


def _check_same_support(item: Mapping[str, CLScenario]) -> None:
    sigs = {name: _support_signature(bm) for name, bm in item.items()}
    first = next(iter(sigs.values()))
    for name, sig in sigs.items():
        if sig != first:
            raise ValueError(
                f"condition {name!r} has other support sets than {next(iter(sigs))!r}; "
                "build paired episode generators with the same seed and presentation"
            )


@validated(make_strategy=Function(), progress=Bool(optional=True), total=Int(0, optional=True),
           shard_episodes=Bool())
def run_episodes(
    make_strategy: Callable[[], object],
    episodes: Iterable[CLScenario | Mapping[str, CLScenario]],
    name: str = "",
    progress: bool | None = None,
    total: int | None = None,
    *,
    shard_episodes: bool = False,
) -> EpisodeResults:
    """Train a fresh strategy on each episode and evaluate it on the queries.

    For each episode, ``make_strategy()`` builds a new Avalanche strategy, which is
    trained on each experience of ``train_stream`` in order and then evaluated
    on ``test_stream``; the episode's accuracy is the strategy's
    ``Top1_Acc_Stream/eval_phase/test_stream`` metric (so its evaluator must
    include ``accuracy_metrics(stream=True)``). An episode may also be a dict
    ``{condition: benchmark}`` (see :func:`paired_conditions`): training uses the
    first benchmark's train stream, and each condition's test stream is scored.

    Args:
        make_strategy: factory returning a NEW strategy on every call.
        episodes: benchmarks, or dicts of benchmarks sharing their train stream.
        name: label stored in the results.
        progress: show a tqdm progress bar; None (default): on a terminal only.
        total: number of episodes, for the progress bar.
        shard_episodes: under ``torch.distributed``, process ``r`` of ``W`` runs
            episodes ``r, r + W, ...`` alone
            (:func:`~neve.models.core.distributed.working_alone`: no collective inside
            an episode), and every process returns all the accuracies in episode order
            (two gathers at the end). Every episode iterable must give the same episodes
            on every process, at least one per process, and the strategies must take
            their loaders from neve (an ``ExactShardsPlugin``, as ``NearestPrototype``
            and ``AnalyticCIL`` do). Without a process group it changes nothing.

    Raises:
        ValueError: if the factory returns the same strategy object twice in a
            row, or the strategy reports no stream accuracy.
    """
    start = time.perf_counter()
    disable = None if progress is None else not progress
    if not (shard_episodes and is_distributed()):
        accuracies = _episode_accuracies(make_strategy, episodes, name, disable, total)
        if not accuracies:
            raise ValueError("episodes must hold at least one episode")
        return EpisodeResults(accuracies, time.perf_counter() - start, name)
    rank, world = rank_and_world()
    mine = (episode for i, episode in enumerate(episodes) if i % world == rank)
    accuracies, error = {}, None
    with working_alone():
        try:
            accuracies = _episode_accuracies(make_strategy, mine, name, disable or rank > 0,
                                             None, alone=True)
            if not accuracies:
                raise ValueError(f"episodes must hold at least one episode per process "
                                 f"(shard_episodes over {world} processes)")
        except Exception as err:  # noqa: BLE001 - raised again below, on every process
            error = err
    reduction = default_reduction()
    reduction.agree(error, "another process could not run its episodes (see its error)")
    conditions = sorted(accuracies)
    counts = reduction.rows(torch.tensor([[len(accuracies[conditions[0]]),
                                           zlib.crc32("\0".join(conditions).encode())]]))
    if len(set(counts[:, 1].tolist())) != 1:
        raise ValueError("the processes' episodes have different conditions: every process "
                         "must iterate over the same episodes")
    rows = reduction.rows(torch.tensor([accuracies[c] for c in conditions],
                                       dtype=torch.float64).T)
    # process r's j-th row is episode j * world + r
    index = torch.cat([torch.arange(int(n)) * world + r for r, n in enumerate(counts[:, 0])])
    ordered = rows[torch.argsort(index)]
    return EpisodeResults({c: ordered[:, k].tolist() for k, c in enumerate(conditions)},
                          time.perf_counter() - start, name)


def _episode_accuracies(make_strategy: Callable[[], object], episodes: Iterable, name: str,
                        disable: bool | None, total: int | None, alone: bool = False
                        ) -> dict[str, list[float]]:
    """Each condition's accuracy of each episode, in order (:func:`run_episodes`); ``alone``:
    refuse strategies whose loaders are Avalanche's (they would shard the episode)."""
    accuracies: dict[str, list[float]] = {}
    previous = None
    for episode in tqdm(episodes, desc=name or "episodes", total=total, disable=disable):
        conditions = dict(episode) if isinstance(episode, Mapping) else {"test": episode}
        if not conditions:
            raise ValueError("an episode dict must hold at least one benchmark")
        if accuracies and set(conditions) != set(accuracies):
            raise ValueError(f"every episode must have the conditions {sorted(accuracies)}")
        strategy = make_strategy()
        if strategy is previous:
            raise ValueError(
                "make_strategy returned the same strategy object as for the previous "
                "episode; it must build a new one per episode"
            )
        if alone and not any(getattr(p, "sets_loaders", False)
                             for p in getattr(strategy, "plugins", ())):
            raise ValueError(
                f"shard_episodes needs strategies whose loaders neve sets (an ExactShardsPlugin, "
                f"as NearestPrototype and AnalyticCIL have); {type(strategy).__name__}'s "
                "loaders are Avalanche's, which would shard each episode over the processes"
            )
        previous = strategy
        first = next(iter(conditions.values()))
        for experience in first.train_stream:
            strategy.train(experience)
        for cond, bm in conditions.items():
            metrics = strategy.eval(bm.test_stream)
            accuracies.setdefault(cond, []).append(_stream_accuracy(metrics))
    return accuracies


def _stream_accuracy(metrics: Mapping[str, float]) -> float:
    for key, value in metrics.items():
        if key.startswith(STREAM_ACCURACY_KEY):
            return float(value)
    raise ValueError(
        "the strategy's evaluator reports no stream accuracy; build it with "
        "EvaluationPlugin(accuracy_metrics(stream=True), ...) "
        f"(got metrics {sorted(metrics)})"
    )
