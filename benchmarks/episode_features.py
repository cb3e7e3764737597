"""Few-shot episodes over a frozen backbone's features, each image encoded once.

:func:`encode_episodes` turns image episodes (:mod:`neve.benchmarks.instance`)
into the same episodes over the features of a frozen backbone, so learners on a
frozen pretrained backbone (:mod:`neve.strategies.episodic`) train on feature
vectors. :class:`BackboneFeatures` memoises the features by image bytes, so
support images repeated across conditions or presentations are encoded once.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator, Mapping

import torch
from avalanche.benchmarks.scenarios.generic_scenario import CLScenario
from torch import nn

from ..models.core.checks import Device, Int, validated
from ..models.features import encode
from .instance import episode_benchmark

EXTRA_ATTRIBUTES = (
    "episode_index",
    "source_class",
    "source_indices",
    "source_classes",
    "support_indices",
    "query_indices",
)


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
    """Callable mapping images ``[B, C, H, W]`` to frozen-backbone features ``[B, D]`` float32.

    Applies ``backbone.transform`` then ``backbone`` (eval mode, no gradients, by
    :func:`neve.models.encode`) and memoises the features by the images' bytes
    (up to ``max_items``; 0 disables), so an image met again (a support image in
    another presentation, the same corrupted query...) is not encoded twice. Pass
    one instance to several :func:`encode_episodes` calls to share the memo.

    Args:
        backbone: an ``nn.Module`` with a ``.transform`` (e.g. a
            :class:`neve.models.Backbone`); moved to ``device``, in eval mode, its
            weights in ``channels_last`` memory format.
        device: where the backbone runs (a GPU asked for must be present).
        batch_size: images per forward pass, >= 1.
        max_items: features kept in the memo, >= 0.
    """

    @validated(device=Device(), batch_size=Int(1), max_items=Int(0))
    def __init__(
        self,
        backbone: nn.Module,
        device: str | torch.device = "cpu",
        batch_size: int = 256,
        max_items: int = 50_000,
    ) -> None:
        transform = getattr(backbone, "transform", None)
        if not isinstance(backbone, nn.Module) or not callable(transform):
            raise TypeError(
                "backbone must be an nn.Module with a callable .transform (e.g. "
                f"neve.models.Backbone), got {type(backbone).__name__}"
            )
        backbone.eval().to(device).to(memory_format=torch.channels_last)
        self.backbone = backbone
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.max_items = max_items
        self.store: dict[bytes, torch.Tensor] = {}

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        keys = [_image_key(x) for x in images]
        missing = [i for i, k in enumerate(keys) if k not in self.store]
        fresh: dict[bytes, torch.Tensor] = {}
        if missing:
            feats = encode(
                self.backbone, images[missing], self.batch_size, self.device, preprocess=True
            )
            fresh = {keys[i]: f for i, f in zip(missing, feats, strict=True)}
        out = torch.stack([self.store.get(k, fresh.get(k)) for k in keys])
        if self.max_items > 0:
            if len(self.store) + len(fresh) > self.max_items:
                self.store.clear()
            self.store.update(fresh)
        return out


def encode_episode(
    benchmark: CLScenario, features: Callable[[torch.Tensor], torch.Tensor]
) -> CLScenario:
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


@validated(memo_items=Int(0))
def encode_episodes(
    episodes: Iterable[CLScenario | Mapping[str, CLScenario]],
    backbone: nn.Module | BackboneFeatures,
    device: str | torch.device = "cpu",
    batch_size: int = 256,
    memo_items: int = 50_000,
) -> Iterator[CLScenario | dict[str, CLScenario]]:
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

    Raises:
        TypeError, ValueError: naming ``backbone``, ``device``, ``batch_size`` or
            ``memo_items``, when called (not at the first episode).
    """
    memo = (
        backbone
        if isinstance(backbone, BackboneFeatures)
        else BackboneFeatures(backbone, device, batch_size, memo_items)
    )
    return _encoded(episodes, memo)


def _encoded(episodes, memo: BackboneFeatures) -> Iterator[CLScenario | dict[str, CLScenario]]:
    for episode in episodes:
        if isinstance(episode, Mapping):
            yield {k: encode_episode(bm, memo) for k, bm in episode.items()}
        else:
            yield encode_episode(episode, memo)
