"""Training the instance test's conv nets on held-out classes, cached on disk.

Kowadlo et al. (2022) pretrain their learners on training classes and test them
on episodes of other classes:

* :func:`pretrain_convnet` -- supervised pretraining (cross-entropy through a
  temporary linear head, Adam) of a :class:`~neve.models.convnets.ConvNet`, the
  body of Pretrain+Tune;
* :func:`meta_train_protonet` -- ProtoNet meta-training on *instance episodes*
  of the training classes: each meta-episode draws ``N`` distinct images of one
  class, each its own label; the queries are the same images, scored by the dot
  product with the class means (:func:`neve.models.prototypes.prototype_scores`),
  and the loss is the cross-entropy of those scores (:func:`protonet_episode_loss`).

Both are seeded and cache the trained weights under
``default_cache_dir()/convnets`` (the file name hashes the settings and the
dataset), so a second call loads them instead of training again.
"""

from __future__ import annotations

import hashlib
import io
import json
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from .atomic_file import write_atomically
from .convnets import ConvNet
from .core.checks import Int, Real, Seed, check_int, validated
from .core.data_checks import check_labelled
from .features import dataset_fingerprint, default_cache_dir
from .prototypes import mean_per_class, prototype_scores


def protonet_episode_loss(
    encoder: nn.Module,
    support_x: torch.Tensor,
    support_y: torch.Tensor,
    query_x: torch.Tensor,
    query_y: torch.Tensor,
) -> torch.Tensor:
    """Cross-entropy of the dot-product scores of the queries against the support class means.

    ``support_y`` holds labels ``0..C-1`` (every one present); the means are of
    ``encoder(support_x)``; the scores ``encoder(query_x) @ means.T``. For an
    instance episode ``query_x`` is ``support_x`` again (one item per label), as
    in the authors' instance test.
    """
    num_classes = int(support_y.max()) + 1
    if torch.equal(support_x, query_x):
        z = encoder(support_x)
        zs, zq = z, z
    else:
        zs, zq = encoder(support_x), encoder(query_x)
    means = mean_per_class(zs, support_y, num_classes)
    return nn.functional.cross_entropy(prototype_scores(zq, means, "dot"), query_y)


def _class_indices(dataset: Dataset, classes: Sequence[int] | None) -> dict[int, np.ndarray]:
    targets = check_labelled(dataset, "dataset").numpy()
    present = sorted(int(c) for c in np.unique(targets))
    if classes is None:
        classes = present
    classes = [check_int(c, "classes", minimum=0) for c in classes]
    missing = sorted(set(classes) - set(present))
    if missing or not classes:
        raise ValueError(f"classes must be a non-empty list of labels of the dataset; "
                         f"{missing} do not occur in it")
    return {c: np.flatnonzero(targets == c) for c in classes}


def _stack(dataset: Dataset, indices) -> torch.Tensor:
    return torch.stack([torch.as_tensor(dataset[int(i)][0]) for i in indices])


def _cache_file(kind: str, settings: dict, dataset: Dataset, cache_dir) -> Path:
    key = json.dumps({"kind": kind, **settings, "data": dataset_fingerprint(dataset)},
                     sort_keys=True)
    name = f"{kind}-{hashlib.sha1(key.encode()).hexdigest()[:16]}.pt"
    root = default_cache_dir() if cache_dir is None else Path(cache_dir)
    return root / "convnets" / name


def _load_or_train(path: Path, net: ConvNet, train, cache: bool) -> ConvNet:
    """The cached net at ``path`` when it loads whole; else trained (and cached).

    A file that does not load into ``net`` (damaged, another net's) is trained again, with
    a warning naming it; a folder that cannot be written warns and keeps the trained net.
    """
    if cache and path.is_file():
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            net.load_state_dict(state["weights"])
            net.training_losses = [float(v) for v in state["losses"]]
            return net.eval()
        except Exception as why:  # noqa: BLE001 -- every failure means: train again
            warnings.warn(f"cached network {path} does not load ({type(why).__name__}: {why}); "
                          "training it again", RuntimeWarning, stacklevel=3)
    losses = train()
    net.training_losses = losses
    if cache:
        buffer = io.BytesIO()
        torch.save({"weights": net.state_dict(), "losses": losses}, buffer)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_atomically(path, lambda file: file.write(buffer.getbuffer()))
        except OSError as error:
            warnings.warn(f"trained network not cached ({error})", RuntimeWarning, stacklevel=3)
    return net.eval()


@validated(stages=Int(1), filters=Int(1), epochs=Int(1), per_class=Int(1, optional=True),
           batch_size=Int(1), lr=Real(gt=0.0), seed=Seed())
def pretrain_convnet(
    dataset: Dataset,
    classes: Sequence[int] | None = None,
    *,
    stages: int = 3,
    filters: int = 32,
    epochs: int = 2,
    per_class: int | None = 2000,
    batch_size: int = 64,
    lr: float = 1e-3,
    seed: int = 0,
    cache: bool = True,
    cache_dir: str | Path | None = None,
) -> ConvNet:
    """A :class:`ConvNet` pretrained by cross-entropy on ``classes`` of ``dataset``; cached.

    A temporary linear head over the classes (relabelled ``0..len(classes)-1``)
    is trained with the body by Adam (``lr``) for ``epochs`` passes over up to
    ``per_class`` items per class, in batches of ``batch_size``, and dropped.
    The result is in eval mode and has ``training_losses`` (mean loss per epoch).

    Args:
        dataset: items ``(image [C, H, W], label)`` with ``.targets``.
        classes: the pretraining classes (default: all); keep them out of the test episodes.
        stages, filters: the net (the authors' Pretrain+Tune: 3 stages).
        seed: seeds the initialisation, the subsample and the batch order.
        cache: load/save the weights under ``cache_dir`` (default
            ``default_cache_dir()``)``/convnets``.
    """
    by_class = _class_indices(dataset, classes)
    settings = {"stages": stages, "filters": filters, "epochs": epochs, "per_class": per_class,
                "batch_size": batch_size, "lr": lr, "seed": seed, "classes": sorted(by_class)}
    rng = np.random.default_rng(settings["seed"])
    chosen = {c: rng.permutation(idx)[:per_class] for c, idx in by_class.items()}
    index = np.concatenate(list(chosen.values()))
    labels = torch.cat([torch.full((len(v),), k) for k, v in enumerate(chosen.values())])
    images = _stack(dataset, index)
    torch.manual_seed(settings["seed"])
    net = ConvNet(stages, filters, images.shape[1], images.shape[-1])

    def train() -> list[float]:
        head = nn.Linear(net.feature_dim, len(by_class))
        params = list(net.parameters()) + list(head.parameters())
        opt = torch.optim.Adam(params, lr=settings["lr"])
        net.train()
        losses = []
        for _ in range(settings["epochs"]):
            order = torch.from_numpy(rng.permutation(len(images)))
            total = 0.0
            for lo in range(0, len(order), settings["batch_size"]):
                b = order[lo : lo + settings["batch_size"]]
                loss = nn.functional.cross_entropy(head(net(images[b])), labels[b])
                opt.zero_grad()
                loss.backward()
                opt.step()
                total += float(loss.detach()) * len(b)
            losses.append(total / len(order))
        return losses

    path = _cache_file("pretrain", settings, dataset, cache_dir)
    return _load_or_train(path, net, train, cache)


@validated(stages=Int(1), filters=Int(1), meta_episodes=Int(1), images_per_episode=Int(2),
           lr=Real(gt=0.0), seed=Seed())
def meta_train_protonet(
    dataset: Dataset,
    classes: Sequence[int] | None = None,
    *,
    stages: int = 4,
    filters: int = 32,
    meta_episodes: int = 300,
    images_per_episode: int = 20,
    lr: float = 1e-3,
    seed: int = 0,
    cache: bool = True,
    cache_dir: str | Path | None = None,
) -> ConvNet:
    """A :class:`ConvNet` meta-trained as a ProtoNet on instance episodes of ``classes``; cached.

    Each of ``meta_episodes`` steps draws one class, ``images_per_episode``
    distinct images of it (label = position), and takes one Adam step on
    :func:`protonet_episode_loss` with the same images as queries (dot-product
    scores against the class means, as the authors score their ProtoNets).
    The result is in eval mode; ``training_losses`` holds every step's loss.

    Args:
        dataset: items ``(image [C, H, W], label)`` with ``.targets``.
        classes: the meta-training classes (default: all); keep them out of the test episodes.
        stages, filters: the net (the authors' ProtoNets: 4 stages).
        seed: seeds the initialisation and the episodes.
    """
    by_class = _class_indices(dataset, classes)
    n = images_per_episode
    settings = {"stages": stages, "filters": filters, "meta_episodes": meta_episodes,
                "images_per_episode": n, "lr": lr, "seed": seed, "classes": sorted(by_class)}
    eligible = [c for c, idx in by_class.items() if len(idx) >= n]
    if not eligible:
        raise ValueError(f"images_per_episode={n} is more than any of the classes has")
    rng = np.random.default_rng(settings["seed"])
    first = torch.as_tensor(dataset[int(by_class[eligible[0]][0])][0])
    torch.manual_seed(settings["seed"])
    net = ConvNet(stages, filters, first.shape[0], first.shape[-1])

    def train() -> list[float]:
        opt = torch.optim.Adam(net.parameters(), lr=settings["lr"])
        net.train()
        labels = torch.arange(n)
        losses = []
        for _ in range(settings["meta_episodes"]):
            cls = eligible[int(rng.integers(len(eligible)))]
            images = _stack(dataset, rng.choice(by_class[cls], size=n, replace=False))
            loss = protonet_episode_loss(net, images, labels, images, labels)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
        return losses

    path = _cache_file("protonet", settings, dataset, cache_dir)
    return _load_or_train(path, net, train, cache)
