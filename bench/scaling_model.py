"""A model of the seconds per experience on N processes, from bench/distributed.py's figures.

    python bench/scaling_model.py bench.json   # the JSON of bench/distributed.py

Per experience, on N processes:

    T(N) = compute / N + serial + sum over collectives of calls * cost(kind, bytes, N)

``compute``: the sharded work (backbone passes, per-item statistics), ``serial``:
what every process repeats (solves, head alignment, scoring), both from the 1 x 1
and 2 x 1 measurements: ``T1 = compute + serial`` and
``T2 = compute / 2 + serial + comm2``. A collective of ``m`` bytes per process
costs ``steps * alpha + traffic * beta`` with the ring algorithms' step counts
and bytes sent per process (:func:`collective_seconds`); ``alpha`` and ``beta``
come from the 2-process calibration (an all-reduce of 4 bytes and of 16 MiB).

The bytes of each method's experience (:func:`method_collectives`), with ``b`` the
feature size (AnalyticCIL: its buffer), ``C`` the classes of the head, ``c`` the
classes of the experience, ``n`` its images:

* AnalyticCIL: per batch (``ceil(n / (N B))`` per process) ``X^T X`` (``8 b^2``),
  ``X^T Y`` (``8 b C``), a count, the largest label and the refusal flag;
* SLCA: the class counts and sums (``8 C (b + 1)``), then for classes of at most
  ``b`` items their float64 feature rows gathered (``8 b n / N`` per process), else
  one scatter per new class (``8 c b^2``), the head from rank 0 (``4 C b``), and with
  DDP one all-reduce of
  every trainable gradient (``4 P``) per global step, ``epochs * n / B`` steps
  whatever N;
* Curriculum Designer: the gathered teacher features (``4 b n / N`` per process);
* NearestPrototype episodes: per group one gather of the features of its images
  (``4 b 40 e / N`` per process, ``e`` episodes of 20 supports and 20 queries); the
  episodes then run alone on each process (``run_episodes(..., shard_episodes=True)``),
  and the group ends with one agreement and the gathers of the episode counts and
  of the accuracies (``8 e / N``).
"""

from __future__ import annotations

import argparse
import json
import math
from typing import NamedTuple


class Collective(NamedTuple):
    """``calls`` collectives per experience of ``kind``, each of ``payload`` bytes per process."""

    kind: str  # "all_reduce", "all_gather" or "broadcast"
    calls: float
    payload: float


def collective_seconds(kind: str, payload: float, processes: int, alpha: float,
                       beta: float) -> float:
    """Seconds of one collective: ``steps * alpha + bytes sent per process * beta``.

    Ring all-reduce: ``2 (N - 1)`` steps, ``2 (N - 1) / N * m`` bytes; ring
    all-gather of ``m`` bytes per process: ``N - 1`` steps, ``(N - 1) m`` bytes;
    binomial-tree broadcast: ``ceil(log2 N)`` steps of ``m`` bytes. 0 for N = 1.
    """
    n = processes
    if n == 1:
        return 0.0
    if kind == "all_reduce":
        return 2 * (n - 1) * alpha + 2 * (n - 1) / n * payload * beta
    if kind == "all_gather":
        return (n - 1) * alpha + (n - 1) * payload * beta
    if kind == "broadcast":
        steps = math.ceil(math.log2(n))
        return steps * (alpha + payload * beta)
    raise ValueError(f"kind must be all_reduce, all_gather or broadcast, got {kind!r}")


def alpha_beta(latency_s: float, large_s: float, large_bytes: float) -> tuple[float, float]:
    """``(alpha, beta)`` from 2-process all-reduces of 4 bytes and of ``large_bytes``.

    At N = 2 an all-reduce of ``m`` bytes costs ``2 alpha + m beta``.
    """
    alpha = latency_s / 2
    beta = max(large_s - latency_s, 0.0) / large_bytes
    return alpha, beta


def method_collectives(method: str, processes: int, *, b: int, classes: int,
                       new_classes: int, images: float, batch: int = 1024,
                       parameters: int = 0, epochs: int = 1, episodes: int = 30
                       ) -> list[Collective]:
    """The collectives of one experience of ``method`` on ``processes`` processes.

    ``images``: the experience's training images (designer: the images fitted);
    ``batch``: AnalyticCIL's ``train_mb_size`` or SLCA's global batch;
    ``parameters``: SLCA's trainable parameters (DDP); ``episodes`` per group.
    """
    n = processes
    if method == "analytic":
        batches = math.ceil(images / (n * batch))
        return [Collective("all_reduce", batches, 8 * b * b), Collective(
            "all_reduce", batches, 8 * b * classes), Collective("all_reduce", 3 * batches, 8)]
    if method in ("slca", "slca-finetune"):
        steps = epochs * math.ceil(images / batch)
        # a class of at most b items: its float64 feature rows gathered; else its scatter
        moments = [Collective("all_gather", 2, 8 * (b + 1) * images / n)] \
            if images / new_classes <= b else [Collective("all_reduce", new_classes, 8 * b * b)]
        out = [Collective("all_reduce", 3, 8 * classes * (b + 1)), *moments,
               Collective("broadcast", 2, 4 * classes * b)]
        return out + ([Collective("all_reduce", steps, 4 * parameters)] if parameters else [])
    if method == "curriculum":
        return [Collective("all_gather", 1, 4 * b * images / n),
                Collective("all_gather", 3, 8 * images / n)]
    if method == "prototype":
        return [Collective("all_gather", 1, 4 * b * 40 * episodes / n),
                Collective("all_reduce", 1, 4),  # the agreement that every process ran
                Collective("all_gather", 3, 8),  # row counts (features, counts, accuracies)
                Collective("all_gather", 1, 16),  # each process's episodes and conditions
                Collective("all_gather", 1, 8 * episodes / n)]
    raise ValueError(f"unknown method {method!r}")


def expected_seconds(compute: float, serial: float, collectives: list[Collective],
                     processes: int, alpha: float, beta: float) -> float:
    """``T(N) = compute / N + serial + sum calls * collective_seconds(...)``."""
    comm = sum(c.calls * collective_seconds(c.kind, c.payload, processes, alpha, beta)
               for c in collectives)
    return compute / processes + serial + comm


def split_compute(t1: float, t2: float, comm2: float) -> tuple[float, float]:
    """``(compute, serial)`` from ``T1 = compute + serial``, ``T2 = compute/2 + serial + comm2``.

    Both clamped to ``[0, T1]`` (measurements under load can be inconsistent).
    """
    compute = min(max(2 * (t1 - t2 + comm2), 0.0), t1)
    return compute, t1 - compute


#: Sizes of examples/distributed.py --dataset fashion-mnist (5 experiences of 2 classes).
FASHION = {"analytic": {"b": 2048, "batch": 1024}, "slca": {"b": 1280, "batch": 128},
           "slca-finetune": {"b": 1280, "batch": 128}, "curriculum": {"b": 1280},
           "prototype": {"b": 1280}}


def table(bench: dict, sizes: dict = FASHION, processes=(1, 2, 4, 8)) -> dict:
    """Per method: ``T(N)`` for each N, and the bytes each process sends per experience."""
    cal = bench["calibration"]
    alpha, beta = alpha_beta(cal["latency_s"], cal["large_s"], cal["bytes"])
    out = {"alpha_s": alpha, "beta_s_per_byte": beta, "methods": {}}
    for method, entry in bench["methods"].items():
        t1 = entry["seconds_per_experience"]["1x1"]
        t2 = entry["breakdown"]["seconds_per_experience"]
        comm2 = entry["breakdown"]["collectives_s"] + entry["breakdown"][
            "ddp_allreduce_s_estimated"]
        compute, serial = split_compute(t1, t2, comm2)
        ddp = entry["breakdown"]["ddp_bytes"]
        kwargs = dict(sizes[method], classes=4, new_classes=2,  # the second experience
                      images=entry["images_per_experience"])
        if method.startswith("slca"):
            kwargs["images"] /= 2  # one epoch and the statistics pass
            steps = math.ceil(kwargs["images"] / kwargs["batch"])
            kwargs["parameters"] = int(ddp / steps / 4) if ddp else 0
        if method == "prototype":
            kwargs["episodes"] = int(entry["images_per_experience"] / 40)
        rows = {}
        for n in processes:
            colls = method_collectives(method, n, **kwargs)
            rows[str(n)] = {
                "seconds": expected_seconds(compute, serial, colls, n, alpha, beta),
                "bytes_sent_per_process": sum(
                    c.calls * c.payload * (2 * (n - 1) / n if c.kind == "all_reduce" else
                                           (n - 1) if c.kind == "all_gather" else 1)
                    for c in colls) if n > 1 else 0.0}
        out["methods"][method] = {"compute_s": compute, "serial_s": serial, "N": rows}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("bench_json")
    args = parser.parse_args()
    with open(args.bench_json) as f:
        print(json.dumps(table(json.load(f)), indent=1))


if __name__ == "__main__":
    main()
