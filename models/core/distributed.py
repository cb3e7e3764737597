"""Several processes: the one module of neve that calls ``torch.distributed`` collectives.

Statistics code never calls a collective itself. It takes a :class:`Reduction`,
which turns what one process computed on its part of the data into what one
process would have computed on all of it: :data:`LOCAL` (the identity) in one
process, :class:`ProcessGroupReduction` (all-reduce, all-gather, broadcast)
under ``torch.distributed``. :func:`default_reduction` picks one. Collectives
go through the process group's backend: tensors travel on CPU under gloo and on
the current CUDA device under NCCL, and come back to the caller's device.

Exactness: :func:`shard` splits a dataset into contiguous, disjoint parts (rank
``r`` gets items ``[r N / W, (r + 1) N / W)``), so the parts concatenated in rank
order are the dataset itself, without the padding of torch's
``DistributedSampler`` (which repeats items to make the parts equal), and a sum
reduced over the parts counts every item once.

Inside :func:`working_alone`, a process of the group works as if it were the only
one (no collective, the whole data), for work that splits into independent units
such as few-shot episodes.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader, Dataset, Subset


def process_group_up() -> bool:
    """True when a ``torch.distributed`` process group with more than one process is up, even
    inside :func:`working_alone` (Avalanche's loaders then still shard their data)."""
    return (
        torch.distributed.is_available()
        and torch.distributed.is_initialized()
        and torch.distributed.get_world_size() > 1
    )


_ALONE = {"depth": 0}


def is_distributed() -> bool:
    """True when neve's work is split over several processes: a process group is up
    (:func:`process_group_up`) and this process is not :func:`working_alone`."""
    return _ALONE["depth"] == 0 and process_group_up()


@contextmanager
def working_alone() -> Iterator[None]:
    """Inside, this process works as the only one: :func:`is_distributed` is False, so
    :func:`rank_and_world` is ``(0, 1)``, :func:`default_reduction` the identity and no
    collective is called; the process group stays up. Avalanche's loaders still see the
    group and shard: strategies run inside need neve's loader policy
    (:class:`~neve.plugins.ExactShardsPlugin`, which gives them the whole data). Nests."""
    _ALONE["depth"] += 1
    try:
        yield
    finally:
        _ALONE["depth"] -= 1


def rank_and_world() -> tuple[int, int]:
    """``(rank, world size)``; ``(0, 1)`` without a process group."""
    if not is_distributed():
        return 0, 1
    return torch.distributed.get_rank(), torch.distributed.get_world_size()


class Reduction:
    """How per-process statistics become the statistics of all the data: here, unchanged.

    The methods take and return tensors; every process must call them in the same
    order with tensors of the same shapes and dtypes (rows may differ in number).
    """

    #: True when the statistics of several processes are combined.
    active = False

    def sum(self, tensors: Sequence[torch.Tensor]) -> Sequence[torch.Tensor]:
        """Each tensor summed over the processes, in place; returns ``tensors``."""
        return tensors

    def max(self, tensors: Sequence[torch.Tensor]) -> Sequence[torch.Tensor]:
        """Each tensor's elementwise maximum over the processes, in place; returns ``tensors``."""
        return tensors

    def rows(self, tensor: torch.Tensor) -> torch.Tensor:
        """Every process's ``[n_r, ...]`` rows concatenated in rank order (same device)."""
        return tensor

    def from_first(self, tensors: Sequence[torch.Tensor]) -> Sequence[torch.Tensor]:
        """Each tensor overwritten with the first process's, in place; returns ``tensors``."""
        return tensors

    def agree(self, error: BaseException | None, elsewhere: str) -> None:
        """Raise on every process when any process has an ``error``.

        The process that has it raises it; the others raise ``ValueError(elsewhere)``,
        so no process goes on to a collective that the failed one never reaches.
        """
        if error is not None:
            raise error


@dataclass
class CollectiveLedger:
    """What this process's :class:`ProcessGroupReduction` calls cost: calls, bytes, seconds.

    ``bytes`` counts each call's payload as this process sends it (the tensor
    all-reduced or broadcast, the padded rows it contributes to an all-gather);
    ``seconds`` is the wall time inside the calls, waiting for slower processes
    included. Read by benches; :meth:`reset` starts a new count.
    """

    calls: int = 0
    bytes: int = 0
    seconds: float = 0.0

    def reset(self) -> None:
        self.calls, self.bytes, self.seconds = 0, 0, 0.0

    def record(self, payload: torch.Tensor, start: float) -> None:
        self.calls += 1
        self.bytes += payload.numel() * payload.element_size()
        self.seconds += time.perf_counter() - start


#: The ledger of every :class:`ProcessGroupReduction` of this process.
LEDGER = CollectiveLedger()


def all_reduce_seconds(numel: int, repeats: int = 5) -> float:
    """Median wall seconds of one all-reduce of ``numel`` float32 values over the group.

    Every process must call it with the same arguments (a calibration of the
    per-collective cost). Not counted in :data:`LEDGER`.
    """
    payload = torch.zeros(numel, dtype=torch.float32, device=_comm_device())
    torch.distributed.all_reduce(payload)  # warm-up
    times = []
    for _ in range(repeats):
        torch.distributed.barrier()
        start = time.perf_counter()
        torch.distributed.all_reduce(payload)
        if payload.is_cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def _comm_device() -> torch.device:
    if torch.distributed.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


class ProcessGroupReduction(Reduction):
    """:class:`Reduction` over the processes of the ``torch.distributed`` process group."""

    active = True

    def _all_reduce(self, tensors: Sequence[torch.Tensor], op) -> Sequence[torch.Tensor]:
        device = _comm_device()
        for t in tensors:
            start = time.perf_counter()
            moved = t.detach().to(device).contiguous()  # NCCL refuses strided tensors
            torch.distributed.all_reduce(moved, op=op)
            t.copy_(moved)
            LEDGER.record(moved, start)
        return tensors

    def sum(self, tensors):
        return self._all_reduce(tensors, torch.distributed.ReduceOp.SUM)

    def max(self, tensors):
        return self._all_reduce(tensors, torch.distributed.ReduceOp.MAX)

    def rows(self, tensor):
        start = time.perf_counter()
        device, world = _comm_device(), torch.distributed.get_world_size()
        size = torch.tensor([tensor.shape[0]], dtype=torch.long, device=device)
        sizes = [torch.zeros_like(size) for _ in range(world)]
        torch.distributed.all_gather(sizes, size)
        counts = [int(s) for s in sizes]
        padded = tensor.new_zeros((max(counts), *tensor.shape[1:]), device=device)
        padded[: tensor.shape[0]] = tensor.to(device)
        parts = [torch.empty_like(padded) for _ in range(world)]
        torch.distributed.all_gather(parts, padded)
        rows = torch.cat([p[:n] for p, n in zip(parts, counts, strict=True)]).to(tensor.device)
        LEDGER.record(padded, start)
        return rows

    def from_first(self, tensors):
        device = _comm_device()
        with torch.no_grad():
            for t in tensors:
                start = time.perf_counter()
                moved = t.detach().to(device).contiguous()
                torch.distributed.broadcast(moved, src=0)
                t.copy_(moved)
                LEDGER.record(moved, start)
        return tensors

    def agree(self, error, elsewhere):
        (failed,) = self.sum([torch.tensor([0.0 if error is None else 1.0])])
        if error is not None:
            raise error
        if float(failed) > 0:
            raise ValueError(elsewhere)


#: The identity reduction of one process.
LOCAL = Reduction()


def default_reduction() -> Reduction:
    """:class:`ProcessGroupReduction` when several processes are up, else :data:`LOCAL`."""
    return ProcessGroupReduction() if is_distributed() else LOCAL


def process_device(local_rank: int, cuda_devices: int) -> torch.device:
    """The device of the process with ``local_rank`` on a node with ``cuda_devices`` GPUs.

    ``cuda:<local_rank>`` (torchrun's ``LOCAL_RANK``, the process's index on its
    node), or the CPU when ``cuda_devices`` is 0. With one visible GPU, ``cuda:0``
    whatever the local rank: a launcher that gives each process its own GPU
    (``CUDA_VISIBLE_DEVICES`` per process, SLURM's ``--gpus-per-task``), or
    processes sharing one GPU (gloo; NCCL refuses that itself). Avalanche 0.6.0's
    ``DistributedHelper`` uses the global rank instead, which names a GPU that
    does not exist on every node after the first.

    Raises:
        ValueError: ``local_rank`` negative, or not below ``cuda_devices > 1``
            (more processes on the node than GPUs).
    """
    if isinstance(local_rank, bool) or not isinstance(local_rank, int) or local_rank < 0:
        raise ValueError(f"local_rank must be an int >= 0 (torchrun's LOCAL_RANK), got "
                         f"{local_rank!r}")
    if cuda_devices == 0:
        return torch.device("cpu")
    if cuda_devices == 1:
        return torch.device("cuda", 0)
    if local_rank >= cuda_devices:
        raise ValueError(
            f"LOCAL_RANK={local_rank} but this node has {cuda_devices} CUDA device(s): start "
            f"at most {cuda_devices} process(es) per node (--nproc_per_node), one per GPU"
        )
    return torch.device("cuda", local_rank)


def shard_range(n: int) -> range:
    """This process's contiguous part ``[r n / W, (r + 1) n / W)`` of ``range(n)``."""
    rank, world = rank_and_world()
    return range(rank * n // world, (rank + 1) * n // world)


def _check_an_item_per_process(n: int, world: int) -> None:
    if n < world:
        raise ValueError(
            f"the dataset holds {n} items but there are {world} processes: every process "
            "needs at least one item"
        )


def shard(dataset: Dataset) -> Dataset:
    """This process's contiguous part of ``dataset`` (the dataset itself when not distributed).

    The parts of all processes, concatenated in rank order, are ``dataset`` in its
    order, each item once.

    Raises:
        ValueError: fewer items than processes (a part would be empty); every
            process raises alike, so none waits in a collective for another.
    """
    if not is_distributed():
        return dataset
    _check_an_item_per_process(len(dataset), rank_and_world()[1])
    return Subset(dataset, list(shard_range(len(dataset))))


def equal_batches(n: int, batch_size: int, *, shuffle: bool = False, seed: int = 0
                  ) -> list[list[int]]:
    """This process's batches of item indices of a dataset of ``n`` items.

    The (optionally seeded-shuffled, the same permutation on every process) index
    list is split as :func:`shard_range`; the part is cut into
    ``ceil(ceil(n / W) / batch_size)`` batches of nearly equal size, the same
    count on every process, so that per-batch collectives (the analytic head's
    all-reduce) pair up. Every index of ``range(n)`` is in exactly one batch of one
    process.

    Raises:
        ValueError: ``n`` smaller than the number of processes (a process would
            have no item), ``batch_size < 1``, or a batch of some process would be
            empty; decided from ``n``, ``batch_size`` and the number of processes
            only, so every process raises alike.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    _, world = rank_and_world()
    _check_an_item_per_process(n, world)
    count = math.ceil(math.ceil(n / world) / batch_size)
    if n // world < count:  # the smallest part cannot fill every batch (same test everywhere)
        raise ValueError(
            f"batch_size={batch_size} leaves a process with an empty batch ({n} items, "
            f"{world} processes); use batch_size >= 2"
        )
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)) if shuffle \
        else torch.arange(n)
    part = order[shard_range(n).start : shard_range(n).stop]
    return [b.tolist() for b in torch.tensor_split(part, count)]


def exact_shard_loader(dataset: Dataset, batch_size: int, *, shuffle: bool = False,
                       seed: int = 0, **loader_args) -> DataLoader:
    """A ``DataLoader`` over this process's :func:`equal_batches` of ``dataset``.

    Without a process group: every item in batches of ``batch_size`` (shuffled when
    ``shuffle``), as a plain loader. ``loader_args`` go to ``DataLoader`` (e.g.
    ``collate_fn``, ``num_workers``).
    """
    if not is_distributed():
        gen = torch.Generator().manual_seed(seed)
        return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=gen,
                          **loader_args)
    batches = equal_batches(len(dataset), batch_size, shuffle=shuffle, seed=seed)
    return DataLoader(dataset, batch_sampler=batches, **loader_args)


def global_batch_part(order: torch.Tensor, batch_size: int, rank: int, world: int
                      ) -> tuple[list[list[int]], list[float]]:
    """Process ``rank``'s part of each global mini-batch, and its loss weight.

    ``order`` (``[n]`` item indices) is cut into global batches of ``batch_size``
    (the last one shorter); each is split into ``world`` contiguous parts of sizes
    differing by at most one (``torch.tensor_split``), and process ``rank`` takes
    part ``rank``. With ``n_r`` items out of a global batch of ``n``, the weight is
    ``n_r * world / n``: DDP averages ``world`` gradients, so
    ``(1/world) sum_r w_r grad(mean_r) = (1/n) sum_i grad(loss_i)``, the gradient
    of the mean loss over the global batch. A part left empty (a last batch
    shorter than ``world``) gets the batch's first item with weight 0, so every
    process runs the same number of forward/backward passes.

    Returns:
        ``(batches, weights)``: one list of indices and one float per global batch.
    """
    batches, weights = [], []
    for batch in torch.split(order, batch_size):
        part = torch.tensor_split(batch, world)[rank]
        if len(part) == 0:
            batches.append(batch[:1].tolist())
            weights.append(0.0)
        else:
            batches.append(part.tolist())
            weights.append(len(part) * world / len(batch))
    return batches, weights
