"""Starting ``torch.distributed`` for Avalanche, with each process on its own node's GPU.

:func:`init_distributed` does what Avalanche's ``DistributedHelper.init_distributed``
does, with each process on ``cuda:LOCAL_RANK``; Avalanche 0.6.0 uses
``cuda:RANK`` (the global rank), which does not exist on a second node.
:func:`ddp_device_ids` is what :class:`neve.plugins.DDPPlugin` wraps with.
"""

from __future__ import annotations

import datetime
import os

import torch
from avalanche.distributed import DistributedHelper

from ..models.core.checks import Seed, Text, validated
from ..models.core.distributed import process_device


@validated(seed=Seed(), backend=Text("None, 'nccl' or 'gloo'", optional=True))
def init_distributed(seed: int, backend: str | None = None, use_cuda: bool = True, *,
                     timeout: datetime.timedelta | None = None) -> torch.device:
    """Start ``torch.distributed`` for Avalanche; returns this process's device.

    What ``DistributedHelper.init_distributed(seed, backend, use_cuda)`` does (the
    process group from torchrun's environment, the same seed in every process,
    Avalanche's map for unpickled tensors), except that each process is put on
    its own node's GPU, ``cuda:LOCAL_RANK``
    (:func:`neve.models.core.distributed.process_device`). Avalanche 0.6.0 uses
    ``cuda:RANK``, the global rank: on the second node of 4 GPUs each, rank 4 asks
    for ``cuda:4`` and fails (``invalid device ordinal``); the same happens in its
    ``wrap_model``, which :class:`DDPPlugin` therefore does not use.

    Without torchrun's environment (no ``LOCAL_RANK``) no process group is started:
    one process, on ``cuda:0`` or the CPU. ``backend`` defaults to ``"nccl"`` with
    CUDA and ``"gloo"`` without; ``"gloo"`` also works with CUDA tensors.
    ``timeout``: how long a collective waits for the other processes (torch's
    default: 10 minutes under NCCL, 30 under gloo), e.g. while rank 0 writes a
    large checkpoint.

    Raises:
        RuntimeError: a process group is already up.
        ValueError: ``seed`` negative, ``backend`` not a string, ``timeout`` not a
            positive ``datetime.timedelta``, ``LOCAL_RANK`` not a non-negative
            integer or not below the node's GPU count.
    """
    if timeout is not None and not (isinstance(timeout, datetime.timedelta)
                                    and timeout.total_seconds() > 0):
        raise ValueError(f"timeout must be None or a positive datetime.timedelta, got "
                         f"{timeout!r}")
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        raise RuntimeError("a torch.distributed process group is already up; "
                           "init_distributed starts it")
    use_cuda = bool(use_cuda) and torch.cuda.is_available()
    local_rank = os.environ.get("LOCAL_RANK")
    try:
        index = int(local_rank or 0)
    except ValueError:
        raise ValueError(f"LOCAL_RANK must be an integer, got {local_rank!r}") from None
    device = process_device(index, torch.cuda.device_count() if use_cuda else 0)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if local_rank is not None:
        backend = backend or ("nccl" if use_cuda else "gloo")
        extra = {} if timeout is None else {"timeout": timeout}
        torch.distributed.init_process_group(
            backend=backend, device_id=device if backend == "nccl" else None, **extra)
    DistributedHelper.use_cuda = use_cuda
    DistributedHelper.set_random_seeds(seed)
    DistributedHelper._dev_map = DistributedHelper._make_map(device)
    return device


def ddp_device_ids(model: torch.nn.Module) -> list[torch.device] | None:
    """``device_ids`` for ``DistributedDataParallel(model)``: the model's one GPU, else None.

    None for a model on the CPU (or spread over several devices), as DDP expects.
    """
    devices = {p.device for p in model.parameters()}
    if len(devices) == 1:
        (device,) = devices
        if device.type == "cuda":
            return [device]
    return None
