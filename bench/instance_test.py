"""Instance test and class-level CFSL on Fashion-MNIST with EfficientNet-Lite0 features: JSON.

Kowadlo et al. (2022). Each instance episode draws 20 distinct test images of
one class, each its own label, shown as S support sets (1x20, 4x5, 20x1); the
queries are the same images, clean, occluded (disc radius r*H, r in {0.05, 0.1,
0.2, 0.3}) or noisy (a fraction p in {0.05, 0.1, 0.2, 0.4} of the pixels set to
U(0, 1)). Every learner is trained once per episode and scored under all nine
query conditions (the support sets do not depend on the condition). The
class-level counterpart (``cfsl_episodes``) draws the 10 classes, 2 support and 2
query images each, as 1, 5 or 10 support sets, so that both tests hold 20
support images; it checks whether replay helps fine-tuning more on instance
tests than on class tests.

Baselines on the frozen backbone (images upsampled to 64 px by ``backbone.transform``):
``tune`` (Pretrain+Tune: linear head, SGD lr 0.01, 5 steps per support set),
``tune+replay`` (the same plus Avalanche's ReplayPlugin over the last L support
sets, k samples per step; the paper's (L, k)), ``prototype`` (nearest class mean,
Avalanche's NCMClassifier) and ``analytic`` (neve's AnalyticCIL). Replay is only
run for ``tune``: the other two keep exact sufficient statistics of every
support item, so replaying stored items would only count them twice.

    nice -n 10 python bench/instance_test.py                 # the full grid
    python bench/instance_test.py --quick                    # a few episodes, a check
    python bench/instance_test.py --episodes 30 --out r.json # per-episode figures too
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
import warnings

import torch

from neve.benchmarks import (
    BackboneFeatures,
    cfsl_episodes,
    encode_episodes,
    fashion_mnist,
    instance_test_episodes,
    paired_conditions,
    run_episodes,
)
from neve.models import pretrained_backbone
from neve.strategies import (
    AnalyticCIL,
    NearestPrototype,
    episode_evaluator,
    paper_replay_settings,
    pretrain_tune,
)

OCCLUSION = (0.05, 0.1, 0.2, 0.3)
NOISE = (0.05, 0.1, 0.2, 0.4)
INSTANCE_PRESENTATIONS = ("1x20", "4x5", "20x1")
CLASS_PRESENTATIONS = ("1x10", "5x2", "10x1")  # support sets x classes per set (2 shots)
METHODS = ("tune", "tune+replay", "prototype", "analytic")


def conditions() -> dict[str, tuple[str | None, float]]:
    out = {"clean": (None, 0.0)}
    out.update({f"occlusion_{r}": ("occlusion", r) for r in OCCLUSION})
    out.update({f"noise_{p}": ("noise", p) for p in NOISE})
    return out


def make_factory(method: str, n_classes: int, support_sets: int, args):
    """Zero-argument factory of a fresh strategy, or None when it does not apply."""
    if method == "tune":
        return lambda: pretrain_tune(n_classes, lr=args.lr, steps_per_set=args.steps,
                                     device=args.device)
    if method == "tune+replay":
        sets, samples = paper_replay_settings(support_sets)
        if sets == 0:
            return None  # one support set: nothing earlier to replay
        return lambda: pretrain_tune(n_classes, lr=args.lr, steps_per_set=args.steps,
                                     replay_sets=sets, replay_samples=samples,
                                     device=args.device)
    if method == "prototype":
        return lambda: NearestPrototype(num_classes=n_classes, device=args.device)
    if method == "analytic":
        return lambda: AnalyticCIL(backbone=torch.nn.Identity(), feature_dim=1280,
                                   buffer_size=args.acil_buffer, gamma=args.acil_gamma,
                                   device=args.device, evaluator=episode_evaluator())
    raise ValueError(f"unknown method {method!r}")


def run_grid(kind: str, presentations, episode_maker, features, args, partial=None) -> dict:
    """Encode each presentation's episodes once, then run every method on them.

    ``partial`` (a dict) receives the results as they come, and is written to
    ``args.out`` after each method, so an interrupted run keeps what it measured.
    """
    out = partial.setdefault(kind, {}) if partial is not None else {}
    for pres in presentations:
        support_sets = int(pres.split("x")[0])
        n_classes = 20 if kind == "instance" else 10
        start = time.perf_counter()
        episodes = list(encode_episodes(episode_maker(support_sets), features))
        encode_s = time.perf_counter() - start
        entry = {"encode_seconds": round(encode_s, 2)}
        entry["replay_L_k"] = list(paper_replay_settings(support_sets))
        for method in args.methods:
            factory = make_factory(method, n_classes, support_sets, args)
            if factory is None:
                entry[method] = None
                continue
            res = run_episodes(factory, episodes, name=f"{kind} {pres} {method}",
                               progress=not args.no_progress, total=len(episodes))
            entry[method] = res.to_dict(per_episode=args.out is not None)
            out[pres] = entry
            if args.out and partial is not None:
                with open(args.out, "w") as fh:
                    json.dump(partial, fh, indent=1)
            print(f"[{kind} {pres} {method}] " + ", ".join(
                f"{c} {res.mean(c):.3f}" for c in res.accuracies
            ) + f" ({res.episodes_per_second:.2f} episodes/s)", file=sys.stderr)
        out[pres] = entry
    return out


def shapes(instance: dict, classes: dict | None) -> dict:
    """The shapes the paper reports, measured: falls with r and p; replay gains."""
    summary = {"accuracy_falls_as_r_grows": {}, "accuracy_falls_as_p_grows": {}}
    for pres, entry in instance.items():
        for method in METHODS:
            res = entry.get(method)
            if not res:
                continue
            c = res["conditions"]
            occ = [c["clean"]["mean"]] + [c[f"occlusion_{r}"]["mean"] for r in OCCLUSION]
            noi = [c["clean"]["mean"]] + [c[f"noise_{p}"]["mean"] for p in NOISE]
            key = f"{pres} {method}"
            summary["accuracy_falls_as_r_grows"][key] = {
                "means_clean_then_r": occ,
                "non_increasing": all(b <= a for a, b in zip(occ, occ[1:], strict=False)),
            }
            summary["accuracy_falls_as_p_grows"][key] = {
                "means_clean_then_p": noi,
                "non_increasing": all(b <= a for a, b in zip(noi, noi[1:], strict=False)),
            }

    def gain(entry):
        if not entry.get("tune+replay") or not entry.get("tune"):
            return None
        cond = "clean" if "clean" in entry["tune"]["conditions"] else "test"
        a = entry["tune+replay"]["conditions"][cond]["mean"]
        b = entry["tune"]["conditions"][cond]["mean"]
        return round(a - b, 4)

    summary["replay_gain_for_tune_clean"] = {
        "instance": {p: gain(e) for p, e in instance.items()},
        "class": {p: gain(e) for p, e in (classes or {}).items()},
    }

    def gap_closed(grid):
        """(replay - tune) / (tune on one support set - tune): share of forgetting undone."""
        single = next((e for p, e in grid.items() if p.startswith("1x")), None)
        if not single or not single.get("tune"):
            return {}
        cond = "clean" if "clean" in single["tune"]["conditions"] else "test"
        top = single["tune"]["conditions"][cond]["mean"]
        out = {}
        for p, e in grid.items():
            g = gain(e)
            if g is not None and top > e["tune"]["conditions"][cond]["mean"]:
                out[p] = round(g / (top - e["tune"]["conditions"][cond]["mean"]), 4)
        return out

    summary["replay_gap_closed_for_tune_clean"] = {
        "instance": gap_closed(instance),
        "class": gap_closed(classes or {}),
    }
    return summary


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--episodes", type=int, default=100)
    parser.add_argument("--quick", action="store_true", help="10 episodes")
    parser.add_argument("--presentations", nargs="+", default=list(INSTANCE_PRESENTATIONS))
    parser.add_argument("--class-presentations", nargs="+", default=list(CLASS_PRESENTATIONS))
    parser.add_argument("--no-class-test", action="store_true")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--steps", type=int, default=5, help="SGD steps per support set")
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--acil-buffer", type=int, default=512)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads; 1 is fastest on a shared machine, where "
                        "spinning threads of small batches fight for the cores")
    parser.add_argument("--acil-gamma", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", default=None, help="also write JSON with per-episode figures")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    n = 10 if args.quick else args.episodes
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")

    start = time.perf_counter()
    _, test = fashion_mnist()
    with contextlib.redirect_stdout(sys.stderr):  # the weights loader prints
        backbone = pretrained_backbone("efficientnet-lite0", input_size=64)
    features = BackboneFeatures(backbone, device=args.device)
    conds = conditions()

    def instance_maker(support_sets):
        return paired_conditions(**{
            name: instance_test_episodes(test, n, 20, support_sets, corr, sev, seed=args.seed)
            for name, (corr, sev) in conds.items()
        })

    def class_maker(support_sets):
        return cfsl_episodes(test, n, n_classes=10, shots=2, support_sets=support_sets,
                             query_shots=2, seed=args.seed)

    partial: dict = {"partial": True}
    instance = run_grid("instance", args.presentations, instance_maker, features, args, partial)
    classes = None
    if not args.no_class_test:
        classes = run_grid("class", args.class_presentations, class_maker, features, args,
                           partial)
    result = {
        "config": {
            "dataset": "Fashion-MNIST test split (10,000 images)",
            "backbone": "efficientnet-lite0, ImageNet-1k, 64 px, frozen",
            "episodes": n,
            "instance": "20 images of one class, instance labels 0..19",
            "class": "10 classes x (2 support + 2 query) images",
            "tune": {"optimizer": "SGD", "lr": args.lr, "steps_per_set": args.steps,
                     "head": "linear, zero init"},
            "analytic": {"buffer_size": args.acil_buffer, "gamma": args.acil_gamma},
            "seed": args.seed,
            "device": args.device,
            "torch_threads": args.threads,
        },
        "instance": instance,
        "class": classes,
        "shapes": shapes(instance, classes),
        "total_seconds": round(time.perf_counter() - start, 1),
    }
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(result, fh, indent=1)
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
