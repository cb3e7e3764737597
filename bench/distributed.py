"""examples/distributed.py on 1 and on N processes, as users start it; prints JSON.

    python bench/distributed.py                          # N = 2, one torchrun, all methods
    python bench/distributed.py --layout nodes           # N one-process "nodes" on localhost
    python bench/distributed.py --layout nodes --backend gloo   # N processes sharing GPU 0

For each method (``analytic``, ``slca`` with a frozen backbone, ``slca-finetune``
with DDP, ``curriculum``) the example runs once in one process and once in N
processes (``OMP_NUM_THREADS=1`` each), saving its tensors. Reported per method:
the largest relative difference ``||a - b|| / ||a||`` over the saved tensors (the
issue's bound: 1e-6), the training seconds per experience that rank 0 prints for
1 and N processes, and their ratio, from this one run.

Layouts: ``standalone`` is ``torchrun --standalone --nproc_per_node=N`` (on GPUs,
one GPU per process, ``cuda:LOCAL_RANK``); ``nodes`` is the README's several-node
command with N torchrun agents of one process each on 127.0.0.1 (every process
has ``LOCAL_RANK=0``, so on one GPU they share it: use ``--backend gloo`` there,
NCCL refuses two processes on one GPU).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "distributed.py"
METHODS = {
    "analytic": ["--method", "analytic"],
    "slca": ["--method", "slca"],
    "slca-finetune": ["--method", "slca", "--finetune"],
    "curriculum": ["--method", "curriculum"],
}
TIMING = re.compile(r"(\d+) process\(es\), ([0-9.]+) s per experience")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(method_args: list[str], processes: int, layout: str, folder: Path,
           extra: list[str] = (), timeout_s: float = 600) -> tuple[dict, float]:
    """Run the example on ``processes`` processes; rank 0's saved tensors and its seconds/exp.

    Raises:
        RuntimeError: a process failed (its output in the message), or rank 0 printed
            no timing or saved nothing.
    """
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if layout == "standalone" or processes == 1:
        agents = [["--standalone", f"--nproc_per_node={processes}"]]
    elif layout == "nodes":
        port = _free_port()
        agents = [[f"--nnodes={processes}", "--nproc_per_node=1", "--rdzv-backend=c10d",
                   f"--rdzv-endpoint=127.0.0.1:{port}", f"--rdzv-id=neve-{port}"]] * processes
    else:
        raise ValueError(f"layout must be 'standalone' or 'nodes', got {layout!r}")
    runs = []
    for i, agent in enumerate(agents):
        cwd = folder / f"agent{i}"
        cwd.mkdir(parents=True)
        runs.append((cwd, subprocess.Popen(
            [sys.executable, "-m", "torch.distributed.run", *agent, str(EXAMPLE), *method_args,
             *extra, "--save", "out.pt"],
            cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)))
    outputs = []
    for _, run in runs:
        out, _ = run.communicate(timeout=timeout_s)
        if run.returncode != 0:
            raise RuntimeError(f"{method_args} on {processes} process(es) failed:\n{out[-4000:]}")
        outputs.append(out)
    saved = [cwd / "out.pt" for cwd, _ in runs if (cwd / "out.pt").exists()]
    timings = [m for out in outputs for m in TIMING.finditer(out)]
    if len(saved) != 1 or len(timings) != 1 or int(timings[0].group(1)) != processes:
        raise RuntimeError(f"expected one rank 0 with a timing and a file, got {saved} and "
                           f"{[t.group(0) for t in timings]}")
    return torch.load(saved[0], weights_only=True), float(timings[0].group(2))


def largest_relative_difference(a: dict, b: dict) -> float:
    """``max_k ||a[k] - b[k]|| / ||a[k]||`` over the same keys (0 for equal zero tensors)."""
    if a.keys() != b.keys():
        raise ValueError(f"the saved keys differ: {sorted(a)} vs {sorted(b)}")
    worst = 0.0
    for k in a:
        x, y = a[k].double(), b[k].double()
        if x.shape != y.shape:
            raise ValueError(f"{k}: shapes {tuple(x.shape)} vs {tuple(y.shape)}")
        diff = float((x - y).norm())
        worst = max(worst, diff / float(x.norm()) if diff else 0.0)
    return worst


def compare(method: str, processes: int, layout: str, extra: list[str] = ()) -> dict:
    """One run on 1 process and one on ``processes``: difference and seconds per experience."""
    with tempfile.TemporaryDirectory() as tmp:
        one, t1 = launch(METHODS[method], 1, layout, Path(tmp) / "one", extra)
        many, tn = launch(METHODS[method], processes, layout, Path(tmp) / "many", extra)
    return {"largest_relative_difference": largest_relative_difference(one, many),
            "tensors": len(one), "seconds_per_experience": {"1": t1, str(processes): tn},
            "ratio": tn / t1}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--layout", choices=("standalone", "nodes"), default="standalone")
    parser.add_argument("--methods", nargs="+", choices=sorted(METHODS), default=list(METHODS))
    parser.add_argument("--backend", choices=("nccl", "gloo"), default=None)
    parser.add_argument("--cpu", action="store_true", help="stay on the CPU with a GPU present")
    args = parser.parse_args()
    extra = (["--backend", args.backend] if args.backend else []) + (["--cpu"] if args.cpu else [])
    start = time.perf_counter()
    report = {
        "device": "cpu" if args.cpu or not torch.cuda.is_available()
        else torch.cuda.get_device_name(0),
        "gpus": torch.cuda.device_count(), "processes": args.processes, "layout": args.layout,
        "backend": args.backend or ("nccl" if torch.cuda.is_available() and not args.cpu
                                    else "gloo"),
        "methods": {m: compare(m, args.processes, args.layout, extra) for m in args.methods},
    }
    report["seconds"] = time.perf_counter() - start
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
