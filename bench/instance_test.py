"""Instance test and many-class CFSL (Kowadlo et al., 2022) on Fashion-MNIST: the full grid, JSON.

Held-out classes: the conv nets are pretrained (Pretrain+Tune body, 3 stages) and
meta-trained (ProtoNet, 4 stages) on Fashion-MNIST TRAIN images of classes 0-4;
the instance episodes draw 20 distinct TEST images of one of classes 5-9, each
its own label, shown as S support sets (1x20, 2x10, 4x5, 10x2, 20x1); the queries
are the same images, clean, occluded (disc radius r*H, r in {0.05, 0.1, 0.2,
0.3}) or noisy (a fraction p in {0.05, 0.1, 0.2, 0.4} of the pixels set to U(0,
1)). Every learner is trained once per episode and scored under all nine query
conditions. Each seed draws its own episodes and pretrains its own nets.

Learners (``--learners``):

* the authors' kind, on 28x28 images: ``conv-tune`` (Pretrain+Tune: ALL layers
  of the pretrained 3-stage net with a fresh 20-way head, SGD lr 0.01, 5 steps
  per support set), ``conv-tune+replay`` (the same with the last L support sets,
  k samples per step, the paper's (L, k)), ``protonet`` (the meta-trained 4-stage
  net, frozen, dot product to the class means);
* on frozen ImageNet EfficientNet-Lite0 features (64 px): ``eff-tune``,
  ``eff-tune+replay`` (linear head, same settings), ``eff-prototype``
  (nearest mean of L2-normalised features: clean accuracy 1 by construction),
  ``eff-prototype-dot`` (dot product to the means of the raw features).

Many-class CFSL (``--cfsl``): 1 shot per class and support set, each class in 2
consecutive support sets (class-change interval 2), 5 classes per set, 5 query
images per class; 10 classes (Fashion-MNIST test) and 20 (plus scikit-learn's
digits upsampled to 28x28); clean queries.

    nice -n 10 python bench/instance_test.py --episodes 200 --conv-episodes 50
    python bench/instance_test.py --quick         # a few episodes, a check
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
import warnings

import numpy as np
import torch

from neve.benchmarks import (
    BackboneFeatures,
    IndexedSubset,
    cfsl_episodes,
    encode_episodes,
    fashion_and_digits,
    fashion_mnist,
    instance_test_episodes,
    mean_confidence_interval,
    paired_conditions,
    run_episodes,
)
from neve.benchmarks.results import mean_and_spread
from neve.models import meta_train_protonet, pretrain_convnet, pretrained_backbone
from neve.strategies import NearestPrototype, paper_replay_settings, pretrain_tune, tune_network

OCCLUSION = (0.05, 0.1, 0.2, 0.3)
NOISE = (0.05, 0.1, 0.2, 0.4)
PRESENTATIONS = ("1x20", "2x10", "4x5", "10x2", "20x1")
LEARNERS = ("conv-tune", "conv-tune+replay", "protonet", "eff-tune", "eff-tune+replay",
            "eff-prototype", "eff-prototype-dot")
PRETRAIN_CLASSES = (0, 1, 2, 3, 4)
EPISODE_CLASSES = (5, 6, 7, 8, 9)


def conditions() -> dict[str, tuple[str | None, float]]:
    out = {"clean": (None, 0.0)}
    out.update({f"occlusion_{r}": ("occlusion", r) for r in OCCLUSION})
    out.update({f"noise_{p}": ("noise", p) for p in NOISE})
    return out


def factory(learner: str, n_classes: int, support_sets: int, nets: dict, args):
    """Zero-argument factory of a fresh strategy; None when it does not apply (no replay at S=1)."""
    sets, samples = paper_replay_settings(support_sets)
    replay = {"replay_sets": sets, "replay_samples": samples} if learner.endswith("replay") else {}
    if replay and sets == 0:
        return None
    common = {"lr": args.lr, "steps_per_set": args.steps, **replay}
    if learner.startswith("conv-tune"):
        return lambda: tune_network(nets["tune"], n_classes, **common)
    if learner.startswith("eff-tune"):
        return lambda: pretrain_tune(n_classes, 1280, **common)
    if learner == "protonet":
        dim = nets["proto"].feature_dim
        return lambda: NearestPrototype(num_classes=n_classes, feature_dim=dim,
                                        normalize=False, scoring="dot")
    if learner == "eff-prototype":
        return lambda: NearestPrototype(num_classes=n_classes, feature_dim=1280)
    if learner == "eff-prototype-dot":
        return lambda: NearestPrototype(num_classes=n_classes, feature_dim=1280,
                                        normalize=False, scoring="dot")
    raise ValueError(f"unknown learner {learner!r}")


def inputs_for(learner: str) -> str:
    return "eff" if learner.startswith("eff") else ("proto" if learner == "protonet" else "image")


def run_cell(episodes: dict, learner, n_classes, support_sets, nets, args, label) -> dict | None:
    make = factory(learner, n_classes, support_sets, nets, args)
    if make is None:
        return None
    eps = episodes[inputs_for(learner)]
    if learner.startswith("conv"):
        eps = eps[: args.conv_episodes]
    res = run_episodes(make, eps, name=label, progress=False)
    print(f"[{label}] " + ", ".join(f"{c} {res.mean(c):.3f}" for c in res.accuracies)
          + f" ({res.episodes_per_second:.2f} episodes/s)", file=sys.stderr, flush=True)
    return {"accuracies": res.accuracies, "seconds": res.seconds}


def summarise(per_seed: list[dict]) -> dict:
    """Pooled mean +- 95% CI over all episodes of all seeds, and over the seed means."""
    out = {"n_episodes_per_seed": len(next(iter(per_seed[0]["accuracies"].values()))),
           "seeds": len(per_seed),
           "episodes_per_second": round(sum(len(next(iter(s["accuracies"].values())))
                                            for s in per_seed)
                                        / sum(s["seconds"] for s in per_seed), 2),
           "conditions": {}}
    spread = mean_and_spread([{c: float(np.mean(a)) for c, a in s["accuracies"].items()}
                              for s in per_seed], ddof=1)
    for cond in per_seed[0]["accuracies"]:
        pooled = [a for s in per_seed for a in s["accuracies"][cond]]
        seed_means = spread[cond]["per_seed"]
        m, h = mean_confidence_interval(pooled)
        sm, sh = mean_confidence_interval(seed_means)
        std = spread[cond]["std"]
        out["conditions"][cond] = {"mean": round(m, 4), "ci95": round(h, 4),
                                   "seed_means": [round(x, 4) for x in seed_means],
                                   "ci95_over_seeds": round(sh, 4),
                                   "std_over_seeds": None if std is None else round(std, 4)}
    return out


def train_nets(train, seed: int, args) -> dict:
    t = time.perf_counter()
    nets = {"tune": pretrain_convnet(train, PRETRAIN_CLASSES, stages=3, filters=args.filters,
                                     seed=seed),
            "proto": meta_train_protonet(train, PRETRAIN_CLASSES, stages=4, filters=args.filters,
                                         meta_episodes=args.meta_episodes, seed=seed)}
    nets["seconds"] = round(time.perf_counter() - t, 1)
    return nets


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--episodes", type=int, default=200, help="per seed and cell")
    parser.add_argument("--conv-episodes", type=int, default=50,
                        help="per seed and cell for conv-tune(+replay), the slow learners")
    parser.add_argument("--cfsl-episodes", type=int, default=100)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--quick", action="store_true", help="4 episodes, 1 seed")
    parser.add_argument("--presentations", nargs="+", default=list(PRESENTATIONS))
    parser.add_argument("--learners", nargs="+", choices=LEARNERS, default=list(LEARNERS))
    parser.add_argument("--cfsl", nargs="*", type=int, default=[10, 20],
                        help="class counts of the many-class CFSL runs (none: skip)")
    parser.add_argument("--steps", type=int, default=5, help="SGD steps per support set")
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--filters", type=int, default=32)
    parser.add_argument("--meta-episodes", type=int, default=300)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    if args.quick:
        args.episodes, args.conv_episodes, args.cfsl_episodes, args.seeds = 4, 4, 4, [0]
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    start = time.perf_counter()
    train, test = fashion_mnist()
    held_out = IndexedSubset(test, torch.nonzero(
        torch.isin(test.targets, torch.tensor(EPISODE_CLASSES))).flatten())
    with contextlib.redirect_stdout(sys.stderr):  # the weights loader prints
        eff = BackboneFeatures(pretrained_backbone("efficientnet-lite0", input_size=64))
    conds = conditions()
    cells: dict = {}
    cfsl_cells: dict = {}
    timing = {"pretrain_seconds": {}, "encode_seconds": {}}
    for seed in args.seeds:
        nets = train_nets(train, seed, args)
        timing["pretrain_seconds"][seed] = nets["seconds"]
        proto = BackboneFeatures(nets["proto"])
        for pres in args.presentations:
            s = int(pres.split("x")[0])
            images = list(paired_conditions(**{
                name: instance_test_episodes(held_out, args.episodes, 20, s, corr, sev, seed=seed)
                for name, (corr, sev) in conds.items()}))
            t = time.perf_counter()
            eps = {"image": images,
                   "eff": list(encode_episodes(images, eff)) if any(
                       inputs_for(x) == "eff" for x in args.learners) else [],
                   "proto": list(encode_episodes(images, proto)) if "protonet" in args.learners
                   else []}
            timing["encode_seconds"][f"{seed} {pres}"] = round(time.perf_counter() - t, 1)
            for learner in args.learners:
                out = run_cell(eps, learner, 20, s, nets, args, f"seed {seed} {pres} {learner}")
                if out is not None:
                    cells.setdefault(learner, {}).setdefault(pres, []).append(out)
        for n_classes in args.cfsl:
            data = test if n_classes == 10 else fashion_and_digits("test")
            s = 2 * n_classes // 5  # 5 classes per set, each class in 2 consecutive sets
            images = list(cfsl_episodes(data, args.cfsl_episodes, n_classes, shots=1,
                                        support_sets=s, query_shots=5, seed=seed,
                                        class_interval=2))
            eps = {"image": images, "eff": list(encode_episodes(images, eff)),
                   "proto": list(encode_episodes(images, proto))}
            for learner in args.learners:
                out = run_cell(eps, learner, n_classes, s, nets, args,
                               f"seed {seed} cfsl-{n_classes} {learner}")
                if out is not None:
                    cfsl_cells.setdefault(learner, {}).setdefault(f"{n_classes} classes",
                                                                  []).append(out)
    result = {
        "config": {
            "instance_data": "Fashion-MNIST test images of classes 5-9 (5,000)",
            "pretraining": "Fashion-MNIST train images of classes 0-4: pretrain_convnet "
                           "(3 stages, 2 epochs over 2,000/class, Adam 1e-3) and "
                           f"meta_train_protonet (4 stages, {args.meta_episodes} instance "
                           "episodes, Adam 1e-3), seeded per seed",
            "filters": args.filters, "authors_filters": 128, "input": "28x28 grey",
            "eff_backbone": "efficientnet-lite0, ImageNet-1k, 64 px, frozen",
            "episodes_per_seed": args.episodes, "conv_tune_episodes_per_seed": args.conv_episodes,
            "cfsl": {"episodes_per_seed": args.cfsl_episodes, "shots": 1, "query_shots": 5,
                     "class_interval": 2, "classes_per_set": 5,
                     "data": {"10": "Fashion-MNIST test (classes 0-4 overlap the pretraining "
                                    "classes; other images)",
                              "20": "Fashion-MNIST test + scikit-learn digits (8x8 upsampled)",
                              "200": "not available offline"}},
            "seeds": args.seeds, "lr": args.lr, "steps_per_set": args.steps,
            "replay_L_k": {p: paper_replay_settings(int(p.split("x")[0]))
                           for p in args.presentations},
            "torch_threads": args.threads, "device": "cpu",
        },
        "instance": {lr: {p: summarise(v) for p, v in ps.items()} for lr, ps in cells.items()},
        "cfsl": {lr: {p: summarise(v) for p, v in ps.items()} for lr, ps in cfsl_cells.items()},
        "timing": timing,
        "total_seconds": round(time.perf_counter() - start, 1),
    }
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
