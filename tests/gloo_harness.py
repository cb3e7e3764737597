"""Run a function on several gloo processes (CPU) and get back what each returned.

Used by the torch.distributed tests (issue #14): each process starts a gloo
process group on a free local port, with one torch thread, calls
``target(rank, world)`` (a module-level function, so that it pickles), saves its
result (tensors and plain data) and ends the group; the test gets the results in
rank order. A run that does not end within ``timeout_s`` (a process waiting
forever in a collective) kills the processes and fails.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _process(rank: int, world: int, port: int, out: str, target: Callable) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world)
    try:
        torch.save(target(rank, world), f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def error_of(call: Callable[[], object], errors: tuple[type[Exception], ...] = (ValueError,)
             ) -> str:
    """``"Type: message"`` of the error among ``errors`` that ``call()`` raised; "" if none.

    For a process to report a refusal back (an exception object may not load with
    ``weights_only=True``) and go on to the end of the group.
    """
    try:
        call()
    except errors as error:
        return f"{type(error).__name__}: {error}"
    return ""


def run_on_processes(target: Callable, tmp_path: Path, world: int = 2,
                     timeout_s: float = 600) -> list:
    """``[target(r, world) for r in range(world)]``, each on its own gloo process."""
    ctx = mp.spawn(_process, args=(world, free_port(), str(tmp_path), target), nprocs=world,
                   join=False)
    deadline = time.monotonic() + timeout_s
    while not ctx.join(timeout=5):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            raise AssertionError("a process waited forever for the other")
    return [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(world)]
