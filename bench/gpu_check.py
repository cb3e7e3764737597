"""One command for a first GPU: every method on CUDA and on CPU, 2 processes sharing cuda:0; JSON.

    python bench/gpu_check.py                       # on CUDA, a few minutes
    python bench/gpu_check.py --device cpu --quick  # the same path on the CPU, tiny sizes

Three launches of ``examples/distributed.py --method all --dataset fashion-mnist``
(EfficientNet-Lite0 in the loop of AnalyticCIL, SLCA frozen and fine-tuned with
DDP, the Curriculum Designer and NearestPrototype episodes):

1. one process on ``--device``;
2. one process on the CPU, the reference (with ``--device cpu``: the CPU with
   two threads instead of one, so the comparison still compares two runs);
3. two processes on ``--device`` with gloo, as two one-process "nodes"
   (``--layout nodes --backend gloo``: both share ``cuda:0`` on one GPU).

Each method's saved tensors must agree, as the largest relative difference
``||a - b|| / ||a||`` over its tensors, within :data:`DEVICE_TOLERANCE` (run 1
against 2: float32 on different hardware; TF32 is off in the example) and
:data:`PROCESS_TOLERANCE` (run 3 against 1: the same device, sums in another
order). Also measured on ``--device``: images per second of the frozen feature
pass (AnalyticCIL's experiences) and of SLCA's fine-tuning (its epochs and
statistics pass), and the seconds of an analytic fit with a buffer of 8192
(random 1280-d features, 4096 samples, 10 classes; ``--quick``: 1024). Prints
JSON; exits 1 when a check fails.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from neve.models import BufferLayer, IncrementalRidge

_SPEC = importlib.util.spec_from_file_location(
    "neve_bench_distributed", Path(__file__).resolve().parent / "distributed.py")
distributed = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(distributed)

#: Largest relative difference allowed between the device's and the CPU's tensors.
DEVICE_TOLERANCE = {"analytic": 1e-3, "slca": 1e-3, "slca-finetune": 1e-2,
                    "curriculum": 1e-3, "prototype": 5e-2}  # prototype: a query may flip
#: Largest relative difference allowed between 2 processes and 1 on the same device.
PROCESS_TOLERANCE = {"analytic": 1e-6, "slca": 1e-6, "slca-finetune": 1e-5,
                     "curriculum": 1e-6, "prototype": 1e-5}  # prototype: raw float32 features


def analytic_fit_seconds(buffer_size: int, device: torch.device, samples: int = 4096,
                         features: int = 1280, classes: int = 10) -> float:
    """Wall seconds of buffer layer + ridge statistics + solve on seeded random features."""
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(samples, features, generator=gen).to(device)
    y = torch.randint(0, classes, (samples,), generator=gen).to(device)
    buffer = BufferLayer(features, buffer_size, seed=0).to(device)
    ridge = IncrementalRidge(buffer_size, gamma=1.0).to(device)
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    ridge.partial_fit(buffer(x), y)
    weight = ridge.weight
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    assert bool(torch.isfinite(weight).all())
    return seconds


def agreement(a: dict, b: dict, tolerances: dict) -> dict:
    """Per method: the largest relative difference of its tensors, the tolerance, ok."""
    out = {}
    for method, tolerance in tolerances.items():
        diff = distributed.largest_relative_difference(distributed.of_method(a, method),
                                                       distributed.of_method(b, method))
        out[method] = {"difference": diff, "tolerance": tolerance, "ok": diff <= tolerance}
    return out


def check(device: str, quick: bool, layout: str = "nodes") -> dict:
    """The three launches, their agreement and the throughputs (see the module docstring)."""
    sizes = ["--dataset", "fashion-mnist", "--experiences", "1" if quick else "2",
             "--per-class", "20" if quick else "600", "--episodes", "2" if quick else "30"]
    on_device = sizes + (["--cpu"] if device == "cpu" else [])
    reference_threads = 2 if device == "cpu" else torch.get_num_threads()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        one, report, _ = distributed.launch(["--method", "all"], 1, layout, tmp / "device",
                                            on_device)
        cpu, _, _ = distributed.launch(["--method", "all"], 1, layout, tmp / "cpu",
                                       sizes + ["--cpu"], threads=reference_threads)
        two, _, _ = distributed.launch(["--method", "all"], 2, layout, tmp / "two",
                                       on_device + ["--backend", "gloo"])
    methods = report["methods"]

    def rate(method: str) -> float:
        return methods[method]["images_per_experience"] / methods[method]["seconds_per_experience"]

    buffer_size = 1024 if quick else 8192
    target = torch.device("cuda", 0) if device == "cuda" else torch.device("cpu")
    result = {
        "device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu",
        "quick": quick, "layout": layout,
        "cuda_vs_cpu": agreement(one, cpu, DEVICE_TOLERANCE),
        "two_processes_vs_one": agreement(two, one, PROCESS_TOLERANCE),
        "throughput": {
            "feature_pass_images_per_s": rate("analytic"),
            "slca_finetune_images_per_s": rate("slca-finetune"),
            "acil_fit_seconds": analytic_fit_seconds(buffer_size, target),
            "acil_buffer_size": buffer_size,
        },
        "seconds_per_experience": {m: r["seconds_per_experience"] for m, r in methods.items()},
    }
    result["ok"] = all(c["ok"] for key in ("cuda_vs_cpu", "two_processes_vs_one")
                       for c in result[key].values())
    result["seconds"] = time.perf_counter() - started
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (seconds of work)")
    parser.add_argument("--layout", choices=("nodes", "standalone"), default="nodes")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but no CUDA device is visible; use --device cpu")
    result = check(args.device, args.quick, args.layout)
    print(json.dumps(result, indent=1))
    sys.exit(0 if result["ok"] else 1)


if __name__ == "__main__":
    main()
