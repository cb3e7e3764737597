"""SLCA ablation bench (the paper's Table 3, made fair): Split Fashion-MNIST 5x2, EfficientNet.

Every arm trains the same ``IncrementalClassifier`` head with the same loss
(cross-entropy over the current experience's classes, as the SLCA authors),
the same class-balanced data, input size and normalisation handling
(``--norm``, :class:`~neve.plugins.SlowLearnerPlugin`'s ``norm_stats``), SGD
momentum 0.9, weight decay 5e-4. Arms (``--arms``):

* ``seq_ft``: the backbone at the head's learning rate (``--seq-ft-lrs`` is a
  grid; each lr is reported); gives ``seq_ft`` and ``seq_ft_ca`` (+ alignment);
* ``slow``: backbone x ``--backbone-lr-scale`` (0.01, the paper); gives
  ``slow_learner``, ``slca`` (+ alignment), ``slca_sdc`` (+ semantic drift
  compensation of the stored means), ``slca_sdc_cov`` (+ the covariances moved
  by a ridge linear fit of the drift, ``--drift-ridge``) and ``slca_shrink`` (+ the authors' mean
  shrinkage);
* ``slow_head_init``, ``slow_fresh_opt``: ``slow`` with the authors' per-task
  head initialisation / a fresh optimizer state per experience;
* ``all_logit``: ``slow`` with Avalanche ``Naive``'s loss over all logits (another loss);
* ``frozen``: the head on frozen eval-mode features computed once; gives
  ``frozen``, ``frozen_ca``, ``frozen_ca_shrink``, and ``analytic``
  (:class:`~neve.strategies.AnalyticCIL` on the same features).

With ``keep_aligned=False`` (the authors' default) alignment changes what is
evaluated but not the training, so one training run gives an arm with and
without alignment and its variants (each re-aligned from the unaligned head
with the plugin's own generator seed). Reported per arm (mean, std over
seeds): ``last`` (all classes after the 5th experience), ``average`` (Inc-Acc:
mean over experiences of the accuracy on the classes seen so far), ``first``
(the first experience's accuracy right after learning it), and the drift of
the stored class means: for the classes of experiences 1-4, the relative L2
distance and the cosine between the stored mean and the mean of the same
training data under the final backbone (``drift_first``: the first
experience's classes). JSON on stdout.

    nice -n 10 python bench/slca.py --quick
    nice -n 10 python bench/slca.py --train-per-class 100 --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from avalanche.benchmarks import nc_benchmark
from avalanche.evaluation.metrics import accuracy_metrics
from avalanche.training.determinism.rng_manager import RNGManager
from avalanche.training.plugins import EvaluationPlugin
from torch import nn

from neve.benchmarks import LabelledTensorDataset, class_balanced_subset, fashion_mnist
from neve.benchmarks.results import mean_and_spread
from neve.models import ImagePreprocess, PretrainedClassifier, pretrained_backbone
from neve.models.drift import drift_jacobian, mean_drift, sdc_shifts
from neve.models.features import extract_features
from neve.models.gaussians import ClassGaussianStats
from neve.models.head_alignment import align_head, alignment_batch_size
from neve.plugins import ClassifierAlignmentPlugin, SlowLearnerPlugin
from neve.plugins.slow_learner import NORM_STATS_MODES
from neve.strategies import SLCA, AnalyticCIL

ARMS = ("seq_ft", "slow", "slow_head_init", "slow_fresh_opt", "all_logit", "frozen")
STREAM = "Top1_Acc_Stream/eval_phase/test_stream/Task000"


def preprocessed(dataset, per_class: int, seed: int, input_size: int) -> LabelledTensorDataset:
    """Class-balanced subset, resized and normalised once: ``[N, 3, S, S]`` tensors."""
    subset = class_balanced_subset(dataset, per_class, seed=seed)
    prep = ImagePreprocess(input_size)
    x = torch.stack([subset[i][0] for i in range(len(subset))])
    y = torch.as_tensor(subset.targets).long()
    with torch.no_grad():
        x = torch.cat([prep(x[i : i + 512]) for i in range(0, len(x), 512)])
        x = x.expand(-1, 3, -1, -1).contiguous()
    return LabelledTensorDataset(x, y)


def feats(module: nn.Module, dataset, device) -> tuple[torch.Tensor, torch.Tensor]:
    return extract_features(module, dataset, 256, device, cache=False, preprocess=False,
                            progress=False)


@torch.no_grad()
def accuracy(head: nn.Module, x: torch.Tensor, y: torch.Tensor, device) -> float:
    head.eval()
    pred = head(x.to(device)).argmax(1).cpu()
    head.train()
    return float((pred == y).float().mean())


def realign(head: nn.Module, state: dict, stats: ClassGaussianStats, args, seed: int,
            device, shrink: bool = False) -> nn.Module:
    """A copy of ``head`` with ``state`` loaded, aligned as the plugin does (same generator)."""
    out = copy.deepcopy(head)
    out.load_state_dict(state)
    align_head(out, stats, samples_per_class=args.samples_per_class,
               epochs=args.alignment_epochs, lr=0.01, temperature=0.1,
               batch_size=alignment_batch_size(len(stats.classes) * args.samples_per_class,
                                               args.alignment_batch_size, 32),
               momentum=0.9, weight_decay=5e-4, generator=torch.Generator().manual_seed(seed),
               device=device, shrink=shrink)
    return out


def run_arm(bm, backbone: nn.Module, feature_dim: int, args, device, *, seed: int, lr: float,
            scale: float, norm: str, current_loss: bool = True, head_init: str | None = None,
            reset_optimizer: bool = False) -> dict:
    """One training run; accuracies of the unaligned head, the aligned head and its variants."""
    RNGManager.set_random_seeds(seed)
    model = PretrainedClassifier(copy.deepcopy(backbone), num_classes=2, feature_dim=feature_dim)
    strategy = SLCA(
        model=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4),
        train_mb_size=args.batch_size, train_epochs=args.epochs, eval_mb_size=256,
        device=device, evaluator=EvaluationPlugin(loggers=[]),
        current_classes_loss=current_loss,
        slow_learner=SlowLearnerPlugin(scale, norm_stats=norm, head_init=head_init,
                                       reset_optimizer=reset_optimizer, seed=seed),
        alignment=ClassifierAlignmentPlugin(samples_per_class=args.samples_per_class,
                                            epochs=args.alignment_epochs,
                                            batch_size=args.alignment_batch_size, seed=seed),
    )
    plugin, head = strategy.alignment, model.classifier
    sdc, sdc_cov = ClassGaussianStats("full", 1e-4), ClassGaussianStats("full", 1e-4)
    acc: dict[str, list[float]] = {"none": [], "ca": [], "ca_sdc": [], "ca_sdc_cov": [],
                                   "ca_shrink": []}
    start = time.perf_counter()
    for k, exp in enumerate(bm.train_stream):
        data = exp.dataset.eval()
        if k > 0 and args.variants:
            before, _ = feats(model.features, data, device)
        strategy.train(exp)
        after, targets = feats(model.features, data, device)
        if k > 0 and args.variants:
            old = sdc.classes
            shifts = sdc_shifts(before, after, torch.stack([sdc.means[c] for c in old]))
            sdc.shift_means(dict(zip(old, shifts, strict=True)))
            sdc_cov.shift_means(dict(zip(old, shifts, strict=True)))
            sdc_cov.map_covariances(drift_jacobian(before, after, args.drift_ridge), old)
        sdc.update(after, targets, group=k)
        sdc_cov.update(after, targets, group=k)
        # the test data seen so far, under the current backbone
        seen = [feats(model.features, e.dataset.eval(), device) for e in bm.test_stream[: k + 1]]
        test_x, test_y = torch.cat([x for x, _ in seen]), torch.cat([y for _, y in seen])
        aligned = copy.deepcopy(head.state_dict())
        unaligned = plugin.unaligned_head or aligned
        acc["ca"].append(accuracy(head, test_x, test_y, device))
        head.load_state_dict(unaligned, strict=False)
        acc["none"].append(accuracy(head, test_x, test_y, device))
        head.load_state_dict(aligned)
        if not args.variants:
            continue
        if k == 0:
            for name in ("ca_sdc", "ca_sdc_cov", "ca_shrink"):
                acc[name].append(acc["ca"][0])
            continue
        gen_seed = seed + k + 1  # the plugin's: seed + experiences seen
        for name, stats, shrink in (("ca_sdc", sdc, False), ("ca_sdc_cov", sdc_cov, False),
                                    ("ca_shrink", plugin.stats, True)):
            variant = realign(head, unaligned, stats, args, gen_seed, device, shrink)
            acc[name].append(accuracy(variant, test_x, test_y, device))
    seconds = time.perf_counter() - start
    # drift: stored means vs the means of the same training data under the final backbone
    drift = {}
    for name, stats in (("stored", plugin.stats), ("sdc", sdc))[: 2 if args.variants else 1]:
        rel, cos, rel_first = [], [], []
        for k, exp in enumerate(bm.train_stream[:-1]):
            x, y = feats(model.features, exp.dataset.eval(), device)
            classes = sorted(int(c) for c in torch.unique(y))
            actual = torch.stack([x[y == c].double().mean(0) for c in classes])
            r, c = mean_drift(torch.stack([stats.means[c] for c in classes]), actual)
            rel += r.tolist()
            cos += c.tolist()
            if k == 0:
                rel_first = r.tolist()
        drift[name] = {"rel_l2": float(np.mean(rel)), "cos": float(np.mean(cos)),
                       "rel_l2_first": float(np.mean(rel_first))}
    return {"acc": acc, "drift": drift, "train_s": seconds}


def analytic_arm(fbm, args, device) -> dict:
    strategy = AnalyticCIL(backbone=nn.Identity(), feature_dim=fbm.train_stream[0].dataset[0][0]
                           .shape[0], buffer_size=args.analytic_buffer, gamma=args.analytic_gamma,
                           device=device,
                           evaluator=EvaluationPlugin(accuracy_metrics(stream=True), loggers=[]))
    seen = []
    for k, exp in enumerate(fbm.train_stream):
        strategy.train(exp)
        seen.append(strategy.eval(fbm.test_stream[: k + 1])[STREAM])
    return {"acc": {"none": seen}}


def scores(per_exp: list[float]) -> dict:
    return {"last": per_exp[-1], "average": float(np.mean(per_exp)), "first": per_exp[0]}


def record(results: dict, name: str, run: dict, variant: str) -> None:
    out = scores(run["acc"][variant])
    if "drift" in run:
        drift = run["drift"]["sdc" if variant.startswith("ca_sdc") else "stored"]
        out.update({"drift_rel_l2": drift["rel_l2"], "drift_cos": drift["cos"],
                    "drift_rel_l2_first": drift["rel_l2_first"]})
    results.setdefault(name, []).append(out)


def summarise(runs: list[dict]) -> dict:
    """Mean, std (over seeds, ddof 0) and per-seed values of each figure, to 4 places."""
    def rounded(value):
        if isinstance(value, list):
            return [rounded(v) for v in value]
        return None if value is None else round(value, 4)

    out = {key: {k: rounded(v) for k, v in figure.items()}
           for key, figure in mean_and_spread(runs).items()}
    out["seeds"] = len(runs)
    return out


def add_run_arguments(p: argparse.ArgumentParser, threads: int) -> None:
    """The options that :func:`preprocessed` data and :func:`run_arm` read (also used by
    bench/slca_authors_loop.py, which calls them); apply ``--quick`` with :func:`quick`."""
    p.add_argument("--quick", action="store_true", help="tiny subsets, for a check")
    p.add_argument("--train-per-class", type=int, default=200)
    p.add_argument("--test-per-class", type=int, default=100)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=0.01, help="head lr (Seq FT: --seq-ft-lrs)")
    p.add_argument("--backbone-lr-scale", type=float, default=0.01)
    p.add_argument("--samples-per-class", type=int, default=256)
    p.add_argument("--alignment-epochs", type=int, default=5)
    p.add_argument("--alignment-batch-size", type=int, default=None,
                   help="None: the plugin's default (adaptive)")
    p.add_argument("--drift-ridge", type=float, default=1.0,
                   help="ridge of the covariance drift fit (slca_sdc_cov)")
    p.add_argument("--input-size", type=int, default=32)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--threads", type=int, default=threads)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--no-variants", dest="variants", action="store_false",
                   help="only the unaligned and aligned heads (no sdc, sdc_cov, shrink)")


def quick(args: argparse.Namespace) -> None:
    """``--quick``: tiny subsets, one epoch, a short alignment."""
    if args.quick:
        args.train_per_class, args.test_per_class, args.epochs = 10, 10, 1
        args.samples_per_class, args.alignment_epochs = 16, 1


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_run_arguments(p, threads=2)
    p.add_argument("--seq-ft-lrs", type=float, nargs="+", default=[0.01, 0.001])
    p.add_argument("--analytic-buffer", type=int, default=2048)
    p.add_argument("--analytic-gamma", type=float, default=1.0)
    p.add_argument("--norm", nargs="+", default=["eval"],
                   choices=list(NORM_STATS_MODES))
    p.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS))
    p.add_argument("--partial-json", default=None, help="rewrite this file after each seed")
    args = p.parse_args(argv)
    quick(args)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    wall = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):  # the weights package prints a line
        backbone = pretrained_backbone("efficientnet-lite0", input_size=args.input_size)
    full_train, full_test = fashion_mnist()
    results: dict = {}
    seconds: dict = {}

    def report() -> dict:
        return {
            "benchmark": "Split Fashion-MNIST 5x2, class-balanced subsets",
            "backbone": f"efficientnet-lite0 (ImageNet) at {args.input_size} px",
            "settings": {k: v for k, v in vars(args).items() if k != "arms"},
            "device": str(device),
            "arms": {name: summarise(r) for name, r in results.items()},
            "arm_seconds": seconds,
            "wall_s": round(time.perf_counter() - wall, 1),
        }

    for seed in args.seeds:
        train = preprocessed(full_train, args.train_per_class, seed, args.input_size)
        test = preprocessed(full_test, args.test_per_class, seed, args.input_size)
        bm = nc_benchmark(train, test, n_experiences=5, task_labels=False, seed=seed)
        common = dict(seed=seed, lr=args.lr, scale=args.backbone_lr_scale)
        for arm in args.arms:
            t = time.perf_counter()
            if arm == "frozen":
                xtr, ytr = feats(backbone, train, device)
                xte, yte = feats(backbone, test, device)
                fbm = nc_benchmark(LabelledTensorDataset(xtr, ytr), LabelledTensorDataset(xte, yte),
                                   n_experiences=5, task_labels=False, seed=seed,
                                   fixed_class_order=list(bm.classes_order))
                run = run_arm(fbm, nn.Identity(), xtr.shape[1], args, device, **dict(
                    common, scale=0.0), norm="eval")
                record(results, "frozen", run, "none")
                record(results, "frozen_ca", run, "ca")
                if args.variants:
                    record(results, "frozen_ca_shrink", run, "ca_shrink")
                record(results, "analytic", analytic_arm(fbm, args, device), "none")
            for norm in args.norm if arm != "frozen" else []:
                tag = f"[{norm}]"
                if arm == "seq_ft":
                    for lr in args.seq_ft_lrs:
                        run = run_arm(bm, backbone, 1280, args, device, **dict(
                            common, lr=lr, scale=1.0), norm=norm)
                        record(results, f"seq_ft{tag} lr={lr}", run, "none")
                        record(results, f"seq_ft_ca{tag} lr={lr}", run, "ca")
                elif arm == "slow":
                    run = run_arm(bm, backbone, 1280, args, device, **common, norm=norm)
                    record(results, f"slow_learner{tag}", run, "none")
                    for variant in ("ca", "ca_sdc", "ca_sdc_cov", "ca_shrink")[
                            : 4 if args.variants else 1]:
                        name = "slca" + variant[2:]
                        record(results, f"{name}{tag}", run, variant)
                elif arm == "all_logit":
                    run = run_arm(bm, backbone, 1280, args, device, **common, norm=norm,
                                  current_loss=False)
                    record(results, f"all_logit_slow{tag} (other loss)", run, "none")
                    record(results, f"all_logit_slow_ca{tag} (other loss)", run, "ca")
                else:
                    option = ({"head_init": "trunc_normal"} if arm == "slow_head_init"
                              else {"reset_optimizer": True})
                    run = run_arm(bm, backbone, 1280, args, device, **common, norm=norm,
                                  **option)
                    record(results, f"{arm}{tag}", run, "none")
                    record(results, f"slca_{arm[5:]}{tag}", run, "ca")
            seconds.setdefault(arm, []).append(round(time.perf_counter() - t, 1))
            print(f"seed {seed} {arm}: {seconds[arm][-1]} s", file=sys.stderr, flush=True)
        if args.partial_json:  # the seeds so far, for a run that may be stopped
            Path(args.partial_json).write_text(json.dumps(report(), indent=1))
    final = report()
    print(json.dumps(final, indent=1))
    return final


if __name__ == "__main__":
    main()
