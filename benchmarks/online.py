"""Online (single-pass) streams: experiences cut into mini-experiences that know their classes.

neve's replacement for Avalanche 0.6.0's ``split_online_stream``, which (1)
gives its sub-experiences no ``classes_in_this_experience`` (so an
``IncrementalClassifier`` raises ``AttributeError`` on them) and (2) never sets
``is_last_subexp`` when the experience size divides the data (so the
after-experience hooks of a strategy with task-boundary access never fire).
Used by :func:`~neve.benchmarks.curriculum_benchmark` and
:func:`~neve.benchmarks.si_blurry_benchmark` with ``online=True``.
The test data of the classes seen so far in such a stream is
:func:`neve.plugins.seen_classes_stream`.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from avalanche.benchmarks.scenarios.generic_scenario import EagerCLStream
from avalanche.benchmarks.scenarios.online import OnlineCLExperience

from ..models.core.checks import Bool, Instance, Int, Seed, validated


class BoundaryAwareOnlineExperience(OnlineCLExperience):
    """An :class:`OnlineCLExperience` that also carries class information.

    ``classes_in_this_experience`` (the classes of this mini-experience),
    ``previous_classes``, ``classes_seen_so_far`` and ``future_classes`` are
    readable in training and evaluation (``IncrementalClassifier`` and other
    dynamic modules read the first). ``kwargs`` go to ``OnlineCLExperience``.
    """

    def __init__(
        self,
        *,
        classes_in_this_experience: Iterable[int],
        previous_classes: Iterable[int],
        classes_seen_so_far: Iterable[int],
        future_classes: Iterable[int],
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.classes_in_this_experience = sorted(classes_in_this_experience)
        self.previous_classes = sorted(previous_classes)
        self.classes_seen_so_far = sorted(classes_seen_so_far)
        self.future_classes = sorted(future_classes)
        self._as_attributes(
            "classes_in_this_experience",
            "previous_classes",
            "classes_seen_so_far",
            "future_classes",
            use_in_train=True,
            use_in_eval=True,
        )


def chunk_indices(n: int, size: int, shuffle: bool = True, seed: int = 0) -> list[list[int]]:
    """``range(n)`` (permuted with ``torch.randperm`` seeded by ``seed`` when
    ``shuffle``) cut into consecutive chunks of ``size`` items, the last one shorter."""
    if shuffle:
        idx = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed))).tolist()
    else:
        idx = list(range(n))
    return [idx[i : i + size] for i in range(0, n, size)]


@validated(experience_size=Int(1), shuffle=Bool(), seed=Seed(), access_task_boundaries=Bool(),
           name=Instance(str, what="a str"))
def split_online(
    stream: Iterable,
    experience_size: int,
    *,
    shuffle: bool = True,
    seed: int = 0,
    access_task_boundaries: bool = True,
    name: str = "train",
) -> EagerCLStream:
    """Split each experience of ``stream`` into mini-experiences of ``experience_size`` items.

    The last mini-experience of every experience has ``is_last_subexp=True``
    (also when ``experience_size`` divides its size), and every mini-experience
    has ``classes_in_this_experience`` and related fields (see
    :class:`BoundaryAwareOnlineExperience`). With ``shuffle``, the items of
    experience ``e`` are permuted with seed ``seed + e`` first; without, they
    keep their order. The stream is eager (a list).

    Args:
        stream: experiences with an Avalanche classification ``dataset``.
        experience_size: items per mini-experience (the last one of each
            experience may hold fewer).
        access_task_boundaries: whether strategies may read ``is_first_subexp`` /
            ``is_last_subexp`` (Avalanche's flag of the same name).
        name: the stream's name.

    Raises:
        TypeError: an argument of the wrong kind, naming it.
        ValueError: ``experience_size`` < 1 or ``seed`` < 0.
    """
    size = experience_size
    try:
        exps = list(stream)
    except TypeError as err:
        raise TypeError(f"stream must be an iterable of experiences, got {stream!r}") from err
    for exp in exps:
        if not hasattr(getattr(exp, "dataset", None), "targets"):
            raise TypeError("stream must hold experiences with a classification dataset")
    all_classes: set[int] = set()
    for exp in exps:
        all_classes |= {int(c) for c in exp.dataset.targets.uniques}
    subs, seen = [], set()
    for e_idx, exp in enumerate(exps):
        ds = exp.dataset
        chunks = chunk_indices(len(ds), size, shuffle, seed + e_idx)
        targets = torch.as_tensor(list(ds.targets))
        prev = set(seen)
        for c_idx, chunk in enumerate(chunks):
            cls = set(torch.unique(targets[chunk]).tolist())
            seen |= cls
            subs.append(
                BoundaryAwareOnlineExperience(
                    dataset=ds.subset(chunk),
                    origin_experience=exp,
                    is_first_subexp=c_idx == 0,
                    is_last_subexp=c_idx == len(chunks) - 1,
                    sub_stream_length=len(chunks),
                    access_task_boundaries=access_task_boundaries,
                    classes_in_this_experience=cls,
                    previous_classes=prev,
                    classes_seen_so_far=set(seen),
                    future_classes=all_classes - seen,
                )
            )
            prev = set(seen)
    return EagerCLStream(name=name, exps=subs)
