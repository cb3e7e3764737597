"""neve's methods on several processes or GPUs, through Avalanche's DistributedHelper.

    torchrun --standalone --nproc_per_node=2 examples/distributed.py \\
        --method analytic --dataset digits --save analytic.pt
    torchrun --standalone --nproc_per_node=2 examples/distributed.py --method slca --save slca.pt
    torchrun --standalone --nproc_per_node=2 examples/distributed.py --method slca --finetune
    torchrun --standalone --nproc_per_node=2 examples/distributed.py --method curriculum
    torchrun --standalone --nproc_per_node=2 examples/distributed.py --method prototype
    torchrun --standalone --nproc_per_node=2 examples/distributed.py \\
        --method all --dataset fashion-mnist --threads 1

Datasets: ``digits`` (Split digits, 5 experiences of 2 classes, a small seeded MLP
backbone) or ``fashion-mnist`` (Split Fashion-MNIST, ``--per-class`` training images
of each class, through the pretrained EfficientNet-Lite0 at ``--input-size`` pixels:
images go in, the backbone runs inside every method). ``--experiences K`` trains
the first K experiences only.
``neve.plugins.init_distributed`` starts the process group (NCCL on GPUs, gloo on
CPU; ``--backend gloo`` also on GPUs, e.g. several processes sharing ``cuda:0``)
with each process on its node's GPU ``cuda:LOCAL_RANK``; Avalanche shards the data
loaders. Saved by rank 0, a dict of tensors (``torch.load(OUT, weights_only=True)``),
the same for any number of processes:

* ``analytic``: AnalyticCIL's head weights (each process runs the backbone on its
  shard; the ridge statistics are summed over processes);
* ``slca``: SLCA's class means and covariances (backbone frozen unless
  ``--finetune``, then also the backbone's and head's weights); features
  gathered over processes; trained with DDP on the same global batches for any
  number of processes that divides the batch (``GlobalBatchPlugin``);
* ``curriculum``: the Curriculum Designer's distance matrix (teacher features
  gathered over processes);
* ``prototype``: NearestPrototype on instance-test episodes (20 images, 4 support
  sets, noisy queries): each process encodes its part of every support set and
  query set of a group of episodes in one pass, the features are gathered; then
  each process runs its share of the episodes alone (``run_episodes(...,
  shard_episodes=True)``: no collective inside an episode) and the accuracies are
  gathered; saved: the episodes' accuracies and the group's features. One
  "experience" is a group.
* ``all``: every method in turn (keys prefixed ``method/``), reseeded before each.

Rank 0 prints the training seconds per experience and a line ``BENCH {json}``
with the timings, the images per experience, the bytes and seconds of neve's
collectives, DDP's gradient traffic and, under several processes, the measured
cost of an all-reduce (read by ``bench/distributed.py``). On GPUs TF32 is off,
so CUDA and CPU results agree to float32 rounding.
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import math
import time
from types import SimpleNamespace
from typing import NamedTuple

import torch
from avalanche.benchmarks import nc_benchmark
from avalanche.distributed import DistributedHelper
from avalanche.evaluation.metrics import accuracy_metrics
from avalanche.training.plugins import EvaluationPlugin

from neve.benchmarks import (
    CurriculumDesigner,
    LabelledTensorDataset,
    digits,
    encode_episode,
    fashion_mnist,
    instance_test_episodes,
    run_episodes,
)
from neve.benchmarks.datasets import balanced_indices
from neve.models import PretrainedClassifier, pretrained_backbone
from neve.models.core.distributed import (
    LEDGER,
    all_reduce_seconds,
    default_reduction,
    is_distributed,
    shard_range,
)
from neve.plugins import (
    ClassifierAlignmentPlugin,
    DDPPlugin,
    GlobalBatchPlugin,
    SlowLearnerPlugin,
    init_distributed,
)
from neve.strategies import SLCA, AnalyticCIL, NearestPrototype

FEATURES = 32


class Setup(NamedTuple):
    """The sizes of one dataset's runs."""

    features: int  # the backbone's feature size
    buffer_size: int  # AnalyticCIL's buffer
    analytic_batch: int  # AnalyticCIL's train_mb_size
    slca_batch: int  # SLCA's global batch
    slca_epochs: int
    designer_per_class: int  # images per class of the designer's prototypes
    episodes: int  # instance-test episodes per timed group
    slca_lr: float  # the head's SGD rate
    backbone_lr_scale: float  # the slow learner's factor for the backbone


SETUPS = {
    "digits": Setup(FEATURES, 512, 64, 16, 2, 500, 3, 0.05, 0.1),
    # SLCA's rates (head 0.01, backbone 0.01 / 100): faster ones make the fine-tuned
    # EfficientNet's features collapse, and any rounding difference then grows
    "fashion-mnist": Setup(1280, 2048, 1024, 128, 1, 200, 30, 0.01, 0.01),
}


def setup_of(args) -> Setup:
    return SETUPS[getattr(args, "dataset", "digits")]


def episodes_of(args) -> int:
    """Instance-test episodes per timed group: ``--episodes`` or the dataset's default."""
    return getattr(args, "episodes", None) or setup_of(args).episodes


def backbone(seed: int) -> torch.nn.Module:
    """Flatten 8x8 digits, Linear(64 -> 32), ReLU; the same seeded weights on every process."""
    gen = torch.Generator().manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, FEATURES), torch.nn.ReLU())
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    return net


@functools.lru_cache(maxsize=2)
def _pretrained(input_size: int) -> torch.nn.Module:
    net = pretrained_backbone("efficientnet-lite0", input_size=input_size)
    return torch.nn.Sequential(net.transform, net)  # not a named Backbone: no feature cache


def network(args) -> torch.nn.Module:
    """The dataset's backbone, raw images in: digits' MLP or EfficientNet-Lite0 with its resize
    (a fresh copy of the weights read once)."""
    if getattr(args, "dataset", "digits") == "digits":
        return backbone(args.seed)
    return copy.deepcopy(_pretrained(args.input_size))


def datasets(args) -> tuple:
    return _datasets(getattr(args, "dataset", "digits"), getattr(args, "per_class", None),
                     args.seed)


@functools.lru_cache(maxsize=2)
def _datasets(dataset: str, per_class: int | None, seed: int) -> tuple:
    """``(train, test)``: digits, or a class-balanced part of Fashion-MNIST ([1, 28, 28] floats)."""
    if dataset == "digits":
        return digits(seed=0)
    parts = []
    for data, count in zip(fashion_mnist(), (per_class, max(1, per_class // 10)), strict=True):
        keep = balanced_indices(data.targets, count, seed=seed)
        parts.append(LabelledTensorDataset(data.data[keep].unsqueeze(1).float() / 255,
                                           data.targets[keep]))
    return tuple(parts)


def evaluator() -> EvaluationPlugin:
    return EvaluationPlugin(accuracy_metrics(stream=True), loggers=[])


def run_stream(strategy, bm, args=None) -> list[float]:
    """Train on each experience (the first ``args.experiences``); the seconds of each ``train``."""
    seconds = []
    for exp in bm.train_stream[: getattr(args, "experiences", None)]:
        DistributedHelper.barrier()
        start = time.perf_counter()
        strategy.train(exp)
        DistributedHelper.barrier()
        seconds.append(time.perf_counter() - start)
    return seconds


def analytic(bm, device, args, report=None) -> tuple[dict, list[float]]:
    setup = setup_of(args)
    strategy = AnalyticCIL(
        backbone=network(args), feature_dim=setup.features, buffer_size=setup.buffer_size,
        gamma=1.0, train_mb_size=setup.analytic_batch, eval_mb_size=256, device=device,
        evaluator=evaluator(),
    )  # AnalyticCIL shards exactly under torch.distributed by itself
    seconds = run_stream(strategy, bm, args)
    return {"weight": strategy.model.head.weight.cpu()}, seconds


def slca(bm, device, args, report=None) -> tuple[dict, list[float]]:
    setup = setup_of(args)
    model = PretrainedClassifier(network(args), num_classes=2, feature_dim=setup.features)
    if not args.finetune:
        model.features.requires_grad_(False)
    strategy = SLCA(
        model=model,
        optimizer=torch.optim.SGD([p for p in model.parameters() if p.requires_grad],
                                  lr=setup.slca_lr, momentum=0.9),
        train_mb_size=setup.slca_batch, train_epochs=setup.slca_epochs, eval_mb_size=256,
        device=device, evaluator=evaluator(),
        slow_learner=SlowLearnerPlugin(setup.backbone_lr_scale, norm_stats="eval"),  # BN: eval
        alignment=ClassifierAlignmentPlugin(samples_per_class=32, epochs=2, seed=args.seed),
        plugins=[GlobalBatchPlugin(seed=args.seed), DDPPlugin()],
    )  # train_mb_size is the global batch: train_mb_size / N items per process
    seconds = run_stream(strategy, bm, args)
    if report is not None:  # DDP all-reduces every trainable gradient once per step
        trained = bm.train_stream[: getattr(args, "experiences", None)]
        report["ddp_steps"] = setup.slca_epochs * sum(
            math.ceil(len(e.dataset) / setup.slca_batch) for e in trained)
        report["ddp_bytes_per_step"] = sum(
            4 * p.numel() for p in model.parameters() if p.requires_grad)
    stats = strategy.alignment.stats
    classes = stats.classes
    out = {
        "classes": torch.tensor(classes),
        "means": torch.stack([stats.means[c] for c in classes]),
        "covariances": torch.stack([stats.covariance_of(c) for c in classes]),
    }
    if args.finetune:
        out.update({f"backbone.{k}": v for k, v in model.features.state_dict().items()})
        out.update({f"head.{k}": v for k, v in model.classifier.state_dict().items()})
    return out, seconds


def curriculum(bm, device, args, report=None) -> tuple[dict, list[float]]:
    train, _ = datasets(args)
    teacher = network(args)
    DistributedHelper.barrier()
    start = time.perf_counter()
    designer = CurriculumDesigner(teacher=teacher, distance="cosine", device=device,
                                  max_per_class=setup_of(args).designer_per_class).fit(train)
    seconds = [time.perf_counter() - start]
    if report is not None:
        counts = torch.bincount(torch.as_tensor(train.targets))
        report["images_per_experience"] = float(counts.clamp(max=designer.max_per_class).sum())
    return {"distances": designer.distances_.clone()}, seconds


def sharded_encoder(net: torch.nn.Module, device, last: dict, chunk: int = 256):
    """Images ``[n, ...]`` -> features ``[n, D]`` (CPU): this process encodes its contiguous
    part (in chunks of ``chunk``), the parts are gathered in rank order; ``last["features"]``
    keeps the latest."""
    net = net.to(device).eval()
    reduction = default_reduction()

    def encode(x: torch.Tensor) -> torch.Tensor:
        part = shard_range(len(x))
        with torch.no_grad():
            feats = torch.cat([net(x[i : min(i + chunk, part.stop)].to(device)).float().cpu()
                               for i in range(part.start, part.stop, chunk)])
        last["features"] = reduction.rows(feats)
        return last["features"]

    return encode


def encode_group(episodes: list, encode) -> list:
    """The episodes over features, every image of the group through one ``encode`` call.

    One sharded pass and one gather for the whole group instead of two per episode:
    a first :func:`encode_episode` pass only collects the image batches it would encode.
    """
    batches: list[torch.Tensor] = []

    def collect(x: torch.Tensor) -> torch.Tensor:
        batches.append(x)
        return torch.zeros(len(x), 1)

    for episode in episodes:
        encode_episode(episode, collect)
    parts = iter(torch.split(encode(torch.cat(batches)), [len(b) for b in batches]))
    return [encode_episode(episode, lambda x: next(parts)) for episode in episodes]


def prototype(bm, device, args, report=None) -> tuple[dict, list[float]]:
    setup = setup_of(args)
    train, _ = datasets(args)
    last: dict = {}
    encode = sharded_encoder(network(args), device, last)
    groups = getattr(args, "experiences", None) or 5
    size = episodes_of(args)
    episodes = list(instance_test_episodes(train, size * groups, 20, 4, "noise", 0.2,
                                           seed=args.seed))
    seconds, accuracies = [], []
    for g in range(groups):
        DistributedHelper.barrier()
        start = time.perf_counter()
        encoded = encode_group(episodes[g * size : (g + 1) * size], encode)
        res = run_episodes(lambda: NearestPrototype(num_classes=20, feature_dim=setup.features,
                                                    device=device), encoded, progress=False,
                           shard_episodes=True)
        DistributedHelper.barrier()
        seconds.append(time.perf_counter() - start)
        accuracies += res.accuracies["test"]
    return {"accuracies": torch.tensor(accuracies, dtype=torch.float64),
            "features": last["features"]}, seconds


def images_per_experience(method: str, bm, args) -> float:
    """Images through the backbone per timed experience (all processes together)."""
    setup = setup_of(args)
    trained = bm.train_stream[: getattr(args, "experiences", None)]
    per_exp = sum(len(e.dataset) for e in trained) / len(trained)
    if method == "prototype":
        return 40.0 * episodes_of(args)  # 20 support images and 20 queries per episode
    if method.startswith("slca"):
        return per_exp * (setup.slca_epochs + 1)  # training epochs and the statistics pass
    return per_exp


METHODS = {"analytic": (analytic, False), "slca": (slca, False),
           "slca-finetune": (slca, True), "curriculum": (curriculum, False),
           "prototype": (prototype, False)}


def run_method(name: str, bm, device, args) -> tuple[dict, dict]:
    """One method: its tensors and its report (seconds, images, collectives, DDP traffic)."""
    function, finetune = METHODS[name]
    DistributedHelper.set_random_seeds(args.seed)
    LEDGER.reset()
    report: dict = {}
    tensors, seconds = function(bm, device, SimpleNamespace(**{**vars(args),
                                                               "finetune": finetune}), report)
    report.setdefault("images_per_experience", images_per_experience(name, bm, args))
    report.update({"seconds_per_experience": sum(seconds) / len(seconds), "timed": len(seconds),
                   "collectives": {"calls": LEDGER.calls, "bytes": LEDGER.bytes,
                                   "seconds": LEDGER.seconds}})
    return tensors, report


def main() -> None:
    started = time.perf_counter()
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--method", choices=("analytic", "slca", "curriculum", "prototype",
                                             "all"), required=True)
    parser.add_argument("--dataset", choices=tuple(SETUPS), default="digits")
    parser.add_argument("--save", default=None, help="where rank 0 saves the tensors")
    parser.add_argument("--finetune", action="store_true",
                        help="slca: train the backbone too (DDP), not only the head")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--per-class", type=int, default=600,
                        help="fashion-mnist: training images per class")
    parser.add_argument("--input-size", type=int, default=32, help="fashion-mnist: pixels")
    parser.add_argument("--experiences", type=int, default=None, help="train the first K only")
    parser.add_argument("--episodes", type=int, default=None,
                        help="prototype: episodes per timed group (default: 3 digits, 30 fashion)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads per process")
    parser.add_argument("--backend", choices=("nccl", "gloo"), default=None,
                        help="default: nccl with CUDA, gloo without")
    parser.add_argument("--cpu", action="store_true", help="stay on the CPU with a GPU present")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.backends.cudnn.allow_tf32 = False  # float32 convolutions: CUDA agrees with CPU

    device = init_distributed(args.seed, backend=args.backend, use_cuda=not args.cpu)
    train, test = datasets(args)
    bm = nc_benchmark(train, test, n_experiences=5, task_labels=False, seed=0)
    names = list(METHODS) if args.method == "all" else \
        ["slca-finetune" if args.method == "slca" and args.finetune else args.method]
    setup_s = time.perf_counter() - started
    tensors, reports = {}, {}
    for name in names:
        found, reports[name] = run_method(name, bm, device, args)
        prefix = f"{name}/" if args.method == "all" else ""
        tensors.update({prefix + k: v for k, v in found.items()})
    calibration = {"latency_s": all_reduce_seconds(1), "bytes": 2 ** 24,
                   "large_s": all_reduce_seconds(2 ** 22)} if is_distributed() else None
    if DistributedHelper.is_main_process:
        world = DistributedHelper.world_size
        for name, rep in reports.items():
            print(f"{name}: {world} process(es), {rep['seconds_per_experience']:.5f} s per "
                  f"experience ({rep['timed']} timed)")
        print("BENCH " + json.dumps({
            "processes": world, "threads": torch.get_num_threads(), "device": str(device),
            "setup_s": setup_s, "calibration": calibration, "methods": reports}))
        if args.save:
            torch.save({k: v.detach().cpu() for k, v in tensors.items()}, args.save)
    if DistributedHelper.is_distributed:
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
