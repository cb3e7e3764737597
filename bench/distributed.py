"""examples/distributed.py on 1 process, on N processes and on 1 process of N threads; JSON.

    python bench/distributed.py --dataset fashion-mnist   # 1x1, 2x1, 1x2, every method
    python bench/distributed.py                           # the same on Split digits
    python bench/distributed.py --layout nodes --backend gloo   # N processes sharing GPU 0
    python bench/distributed.py --dataset fashion-mnist --repeats 2   # fastest of 2 rounds

One launch of ``examples/distributed.py --method all`` per configuration: 1 process
x 1 thread, N processes x 1 thread (``OMP_NUM_THREADS=1``), 1 process x N threads,
each saving its tensors. Reported per method: the seconds per experience of each
configuration and its speed-up against 1 x 1, the largest relative difference
``||a - b|| / ||a||`` between the tensors saved by 1 and N processes, the same
between 1 x 1 and 1 x N (one process: only the summation order of floats changes,
the floor that N processes cannot beat on training that amplifies rounding), and a
breakdown of the N-process time: the seconds per experience inside neve's
collectives (measured by rank 0, waiting included), DDP's gradient all-reduces
(estimated from their bytes and the all-reduce cost measured in the same run),
the rest (compute), and what is lost against a perfect ``1 / N`` split. Start-up
(interpreter, imports, process group, weights, data) is reported per launch.

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
    "prototype": ["--method", "prototype"],
}
REPORT = re.compile(r"^BENCH (\{.*\})$", re.MULTILINE)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(method_args: list[str], processes: int, layout: str, folder: Path,
           extra: list[str] = (), timeout_s: float = 1200, threads: int = 1
           ) -> tuple[dict, dict, float]:
    """Run the example on ``processes`` processes of ``threads`` threads each.

    Returns:
        rank 0's saved tensors, its ``BENCH`` report and the launch's wall seconds.

    Raises:
        RuntimeError: a process failed (its output in the message), or rank 0 printed
            no report or saved nothing.
    """
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    method_args = [*method_args, "--threads", str(threads)]
    started = time.perf_counter()
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
    wall = time.perf_counter() - started
    saved = [cwd / "out.pt" for cwd, _ in runs if (cwd / "out.pt").exists()]
    reports = [json.loads(m.group(1)) for out in outputs for m in REPORT.finditer(out)]
    if len(saved) != 1 or len(reports) != 1 or reports[0]["processes"] != processes:
        raise RuntimeError(f"expected one rank 0 with a report and a file, got {saved} and "
                           f"{len(reports)} report(s)")
    return torch.load(saved[0], weights_only=True), reports[0], wall


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


def seconds_of(report: dict) -> float:
    """The one method's seconds per experience in a one-method ``BENCH`` report."""
    (method,) = report["methods"].values()
    return method["seconds_per_experience"]


def compare(method: str, processes: int, layout: str, extra: list[str] = ()) -> dict:
    """One run of one method on 1 process and one on ``processes``: difference and seconds."""
    with tempfile.TemporaryDirectory() as tmp:
        one, r1, _ = launch(METHODS[method], 1, layout, Path(tmp) / "one", extra)
        many, rn, _ = launch(METHODS[method], processes, layout, Path(tmp) / "many", extra)
    t1, tn = seconds_of(r1), seconds_of(rn)
    return {"largest_relative_difference": largest_relative_difference(one, many),
            "tensors": len(one), "seconds_per_experience": {"1": t1, str(processes): tn},
            "ratio": tn / t1}


def of_method(tensors: dict, method: str) -> dict:
    """The tensors saved under ``method/`` by a ``--method all`` run, without the prefix
    (all of them when no key has a prefix: a one-method run)."""
    prefix = f"{method}/"
    if not any("/" in k for k in tensors):
        return dict(tensors)
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}


def breakdown(single: dict, many: dict, calibration: dict, processes: int) -> dict:
    """Where the N-process seconds per experience of one method go.

    ``single`` and ``many``: the method's reports at 1 x 1 and N x 1;
    ``calibration``: the N-process run's all-reduce costs (latency and a large
    payload). DDP's all-reduces are estimated as ``latency + bytes * per_byte``
    per step (they overlap the backward pass, so this is an upper bound of their
    share); neve's collectives are measured.
    """
    timed = many["timed"]
    per_byte = (calibration["large_s"] - calibration["latency_s"]) / calibration["bytes"]
    ddp = many.get("ddp_steps", 0) * (calibration["latency_s"]
                                      + many.get("ddp_bytes_per_step", 0) * per_byte) / timed
    collectives = many["collectives"]["seconds"] / timed
    total = many["seconds_per_experience"]
    ideal = single["seconds_per_experience"] / processes
    return {
        "seconds_per_experience": total,
        "ideal_seconds": ideal,
        "collectives_s": collectives,
        "collective_calls": many["collectives"]["calls"] / timed,
        "collective_bytes": many["collectives"]["bytes"] / timed,
        "ddp_allreduce_s_estimated": ddp,
        "ddp_bytes": many.get("ddp_steps", 0) * many.get("ddp_bytes_per_step", 0) / timed,
        "compute_s": total - collectives - ddp,
        "lost_s": total - ideal,
        "compute_per_image_s": single["seconds_per_experience"]
        / single["images_per_experience"],
    }


def scaling(processes: int, layout: str, extra: list[str], method: str = "all",
            timeout_s: float = 1200, repeats: int = 1) -> dict:
    """``repeats`` rounds of one ``--method all`` (or one method's) launch per
    configuration (1x1, Nx1, 1xN, interleaved); the per-method report.

    Each method's seconds per configuration are the fastest of its rounds (on a shared
    machine another job only ever slows a launch down), its breakdown comes from the
    launches that gave them (with that N-process launch's calibration), and the
    differences from the first round's tensors.
    """
    configs = {"1x1": (1, 1), f"{processes}x1": (processes, 1), f"1x{processes}": (1, processes)}
    runs, loads = {name: [] for name in configs}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(repeats):
            for name, (procs, threads) in configs.items():
                runs[name].append(launch(METHODS.get(method, ["--method", "all"]), procs, layout,
                                         Path(tmp) / f"{name}-{round_}", extra, threads=threads,
                                         timeout_s=timeout_s))
                loads.setdefault(name, os.getloadavg()[0])  # 1-minute load, end of round 0
    first = {name: rounds[0] for name, rounds in runs.items()}
    many = f"{processes}x1"
    methods = {}
    for method in first["1x1"][1]["methods"]:
        def of(run: tuple, method: str = method) -> dict:
            return run[1]["methods"][method]  # the method's entry in a launch's report
        rounds_s = {name: [of(run)["seconds_per_experience"] for run in rounds]
                    for name, rounds in runs.items()}
        fastest = {name: min(rounds, key=lambda run: of(run)["seconds_per_experience"])
                   for name, rounds in runs.items()}
        seconds = {name: of(run)["seconds_per_experience"] for name, run in fastest.items()}
        methods[method] = {
            "seconds_per_experience": seconds,
            "seconds_per_experience_rounds": rounds_s,
            "speedup": {name: seconds["1x1"] / s for name, s in seconds.items() if name != "1x1"},
            "largest_relative_difference": largest_relative_difference(
                of_method(first["1x1"][0], method), of_method(first[many][0], method)),
            # the floor: one process, only the thread count (a float's summation order) changed
            "largest_relative_difference_threads": largest_relative_difference(
                of_method(first["1x1"][0], method),
                of_method(first[f"1x{processes}"][0], method)),
            "images_per_experience": of(first["1x1"])["images_per_experience"],
            "breakdown": breakdown(of(fastest["1x1"]), of(fastest[many]),
                                   fastest[many][1]["calibration"], processes),
        }
    startup = {name: {"launch_wall_s": wall, "setup_s": report["setup_s"],
                      "training_s": sum(m["seconds_per_experience"] * m["timed"]
                                        for m in report["methods"].values())}
               for name, (_, report, wall) in first.items()}
    for name, entry in startup.items():
        entry["startup_s"] = entry["launch_wall_s"] - entry["training_s"]
        entry["load_average_1min_at_end"] = loads[name]
    return {"methods": methods, "startup": startup, "repeats": repeats,
            "calibration": first[many][1]["calibration"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--layout", choices=("standalone", "nodes"), default="standalone")
    parser.add_argument("--dataset", choices=("digits", "fashion-mnist"), default="digits")
    parser.add_argument("--method", choices=("all", *METHODS), default="all",
                        help="every method in one launch per configuration, or one")
    parser.add_argument("--per-class", type=int, default=None,
                        help="fashion-mnist: training images per class (example's default)")
    parser.add_argument("--experiences", type=int, default=None,
                        help="train the first K experiences (fashion-mnist default: 2)")
    parser.add_argument("--backend", choices=("nccl", "gloo"), default=None)
    parser.add_argument("--cpu", action="store_true", help="stay on the CPU with a GPU present")
    parser.add_argument("--timeout", type=float, default=1200, help="seconds per launch")
    parser.add_argument("--repeats", type=int, default=1,
                        help="rounds of launches; each time is the fastest of its rounds")
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error(f"--repeats must be at least 1, got {args.repeats}")
    extra = (["--backend", args.backend] if args.backend else []) + (["--cpu"] if args.cpu else [])
    extra += ["--dataset", args.dataset]
    experiences = args.experiences or (2 if args.dataset == "fashion-mnist" else None)
    extra += ["--experiences", str(experiences)] if experiences else []
    extra += ["--per-class", str(args.per_class)] if args.per_class else []
    start, load = time.perf_counter(), os.getloadavg()
    report = {
        "device": "cpu" if args.cpu or not torch.cuda.is_available()
        else torch.cuda.get_device_name(0),
        "gpus": torch.cuda.device_count(), "processes": args.processes, "layout": args.layout,
        "backend": args.backend or ("nccl" if torch.cuda.is_available() and not args.cpu
                                    else "gloo"),
        "dataset": args.dataset, "cpu_cores": os.cpu_count(),
        **scaling(args.processes, args.layout, extra, args.method, args.timeout, args.repeats),
    }
    report["seconds"] = time.perf_counter() - start
    report["load_average"] = {"before": load, "after": os.getloadavg()}
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
