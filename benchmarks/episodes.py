"""Running learners over few-shot episodes: a fresh strategy per episode, mean accuracy +- 95% CI.

* :func:`run_episodes` trains a new strategy (from a factory) on each episode's
  train stream, evaluates it on the test stream and returns
  :class:`EpisodeResults`.
* :func:`encode_episodes` turns image episodes into episodes over the features
  of a frozen backbone, computed once per episode (and memoised per image), so
  learners on a frozen pretrained backbone train on features.
* :func:`paired_conditions` zips episode generators that share their support sets
  (same seed, different query corruptions) so that each strategy is trained once
  per episode and evaluated under every condition.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field

import numpy as np
import torch
from avalanche.benchmarks.scenarios.generic_scenario import CLScenario
from scipy import stats
from tqdm.auto import tqdm

from neve.benchmarks.instance import episode_benchmark

STREAM_ACCURACY_KEY = "Top1_Acc_Stream/eval_phase/test_stream"
EXTRA_ATTRIBUTES = (
    "episode_index",
    "source_class",
    "source_indices",
    "source_classes",
    "support_indices",
    "query_indices",
)


def mean_confidence_interval(values: Iterable[float], level: float = 0.95) -> tuple[float, float]:
    """Mean and half-width of its Student-t confidence interval at ``level``.

    Half-width ``t_{(1+level)/2, n-1} * s / sqrt(n)`` with ``s`` the sample standard
    deviation (ddof=1); 0 for a single value.
    """
    x = np.asarray(list(values), dtype=np.float64)
    if x.size == 0:
        raise ValueError("values must not be empty")
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
    extra: dict = field(default_factory=dict)

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
        if condition is None:
            if len(self.accuracies) != 1:
                raise ValueError(f"condition must be one of {sorted(self.accuracies)}")
            return next(iter(self.accuracies))
        if condition not in self.accuracies:
            raise ValueError(f"condition must be one of {sorted(self.accuracies)}, "
                             f"got {condition!r}")
        return condition

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
        out.update(self.extra)
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
    iterators = {name: iter(it) for name, it in episodes.items()}
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


def run_episodes(
    make_strategy: Callable[[], object],
    episodes: Iterable[CLScenario | Mapping[str, CLScenario]],
    name: str = "",
    progress: bool = True,
    total: int | None = None,
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
        progress: show a tqdm progress bar.
        total: number of episodes, for the progress bar.

    Raises:
        ValueError: if the factory returns the same strategy object twice in a
            row, or the strategy reports no stream accuracy.
    """
    accuracies: dict[str, list[float]] = {}
    previous = None
    start = time.perf_counter()
    for episode in tqdm(episodes, desc=name or "episodes", total=total, disable=not progress):
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
        previous = strategy
        first = next(iter(conditions.values()))
        for experience in first.train_stream:
            strategy.train(experience)
        for cond, bm in conditions.items():
            metrics = strategy.eval(bm.test_stream)
            accuracies.setdefault(cond, []).append(_stream_accuracy(metrics))
    if not accuracies:
        raise ValueError("episodes must hold at least one episode")
    return EpisodeResults(accuracies, time.perf_counter() - start, name)


def _stream_accuracy(metrics: Mapping[str, float]) -> float:
    for key, value in metrics.items():
        if key.startswith(STREAM_ACCURACY_KEY):
            return float(value)
    raise ValueError(
        "the strategy's evaluator reports no stream accuracy; build it with "
        "EvaluationPlugin(accuracy_metrics(stream=True), ...) "
        f"(got metrics {sorted(metrics)})"
    )


# --------------------------------------------------------------------------- features


def _experience_tensors(experience) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = [], []
    for item in experience.dataset:
        xs.append(torch.as_tensor(item[0]))
        ys.append(int(item[1]))
    return torch.stack(xs), torch.tensor(ys, dtype=torch.long)


def _image_key(image: torch.Tensor) -> bytes:
    x = image.detach().cpu().contiguous()
    return hashlib.sha1(str(tuple(x.shape)).encode() + x.numpy().tobytes()).digest()


class BackboneFeatures:
    """Callable mapping images ``[B, C, H, W]`` to frozen-backbone features ``[B, D]``.

    Applies ``backbone.transform`` then ``backbone`` (eval mode, no gradients) and
    memoises the features by the images' bytes (up to ``max_items``; 0 disables),
    so an image met again (a support image in another presentation, the same
    corrupted query...) is not encoded twice. Pass one instance to several
    :func:`encode_episodes` calls to share the memo.
    """

    def __init__(
        self,
        backbone,
        device: str | torch.device = "cpu",
        batch_size: int = 256,
        max_items: int = 50_000,
    ) -> None:
        backbone.eval().to(device).to(memory_format=torch.channels_last)
        self.backbone = backbone
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.max_items = max_items
        self.store: dict[bytes, torch.Tensor] = {}

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        keys = [_image_key(x) for x in images]
        missing = [i for i, k in enumerate(keys) if k not in self.store]
        fresh: dict[bytes, torch.Tensor] = {}
        for lo in range(0, len(missing), self.batch_size):
            idx = missing[lo : lo + self.batch_size]
            x = self.backbone.transform(images[idx].to(self.device))
            # channels_last runs EfficientNet's depthwise convolutions faster on CPU
            x = x.contiguous(memory_format=torch.channels_last)
            feats = self.backbone(x).float().cpu()
            for i, f in zip(idx, feats, strict=True):
                fresh[keys[i]] = f
        out = torch.stack([self.store.get(k, fresh.get(k)) for k in keys])
        if self.max_items > 0:
            if len(self.store) + len(fresh) > self.max_items:
                self.store.clear()
            self.store.update(fresh)
        return out


def encode_episode(benchmark: CLScenario, features: Callable[[torch.Tensor], torch.Tensor]):
    """The same episode with every input ``x`` replaced by ``features(x)``.

    Keeps the experiences, labels and the episode attributes (``episode_index``,
    ``source_indices``...). ``features`` maps a batch ``[B, ...]`` to ``[B, D]``.
    """
    train = [_experience_tensors(exp) for exp in benchmark.train_stream]
    test = [_experience_tensors(exp) for exp in benchmark.test_stream]
    if len(test) != 1:
        raise ValueError(f"expected one test experience, got {len(test)}")
    support_x = features(torch.cat([x for x, _ in train]))
    support_y = torch.cat([y for _, y in train])
    query_x = features(test[0][0])
    out = episode_benchmark(support_x, support_y, query_x, test[0][1], len(train))
    for attr in EXTRA_ATTRIBUTES:
        if hasattr(benchmark, attr):
            setattr(out, attr, getattr(benchmark, attr))
    return out


def encode_episodes(
    episodes: Iterable[CLScenario | Mapping[str, CLScenario]],
    backbone,
    device: str | torch.device = "cpu",
    batch_size: int = 256,
    memo_items: int = 50_000,
):
    """Map image episodes to episodes over a frozen backbone's features.

    Each image goes through ``backbone.transform`` (upsampling, 3 channels,
    normalisation) and ``backbone`` in eval mode, without gradients. Features
    are memoised by image bytes (up to ``memo_items``, 0 disables), so support
    images repeated across conditions or presentations are encoded once.

    Args:
        episodes: benchmarks or dicts of benchmarks (as :func:`run_episodes` takes).
        backbone: a :class:`neve.models.Backbone` (or any module with ``.transform``),
            or a :class:`BackboneFeatures` (whose memo is then shared).
        device: where the backbone runs.
        batch_size: images per forward pass.
        memo_items: features kept in the memo.

    Yields:
        the episodes, with feature tensors ``[D]`` as inputs.
    """
    memo = (
        backbone
        if isinstance(backbone, BackboneFeatures)
        else BackboneFeatures(backbone, device, batch_size, memo_items)
    )
    for episode in episodes:
        if isinstance(episode, Mapping):
            yield {k: encode_episode(bm, memo) for k, bm in episode.items()}
        else:
            yield encode_episode(episode, memo)
