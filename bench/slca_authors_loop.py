"""SLCA as the authors' training loop, in plain torch, next to neve's ``SLCA`` (issue #13.5).

An independent re-implementation of the procedure of the SLCA authors' code
(Zhang et al., ICCV 2023; GengDavid/SLCA: ``models/slca.py``,
``convs/linears.py``, ``exps/slca/*.json``), read for its facts, on exactly the
data of ``bench/slca.py`` (its ``preprocessed`` subsets, the ``nc_benchmark``
class order of the seed, the same EfficientNet-Lite0 backbone):

* per task, a new linear head block (weights trunc-normal std 0.02, zero bias)
  is appended to the old blocks, which are frozen while the task trains;
* per task, a new SGD (momentum 0.9, weight decay 5e-4) over the backbone
  (lr x ``--backbone-lr-scale``) and the new block (lr);
* the loss: cross-entropy over the new block's logits only (their label shift);
* the backbone in eval mode (``--norm eval``: running statistics used and not
  updated, drop-connect off) or in train mode as their code (``--norm train``);
* class statistics of eval-mode features: float64 mean and covariance + 1e-4 I;
* from the second task, classifier alignment (paper Sec. 4.2, Eq. 3): a new SGD
  (lr, momentum 0.9, weight decay 5e-4, cosine over ``--alignment-epochs``) over
  all blocks; each epoch draws ``--samples-per-class`` features per class,
  shuffles them, mini-batches of 256 (their loop), logits divided by the mean
  over task blocks of the block's L2 norm and by tau = 0.1; their means are
  shrunk, ``mu_c (0.9 + 0.1 (t_c + 1) / (T + 1))``;
* evaluation with the aligned head over all logits; the unaligned head is
  restored before the next task.

One training run gives several alignments of the same unaligned head:
``authors_loop_ca`` (as above), ``authors_loop_ca_noshrink`` (means not shrunk,
as neve's default) and ``authors_loop_ca_neve_batch`` (no shrinkage, neve's
alignment batch: 256 made smaller to give at least 32 steps an epoch), and
``authors_loop`` (the unaligned head). The neve rows are ``bench/slca.py``'s
``run_arm`` (backbone in eval mode) with ``SlowLearnerPlugin``'s ``head_init``
and ``reset_optimizer`` off / on. Reported (mean, std over seeds): ``last``,
``average`` (Inc-Acc), ``first`` (the first task's accuracy right after it).
JSON on stdout; ``--merge`` summarises the JSON of several runs (e.g. one per
seed, run side by side).

    nice -n 10 python bench/slca_authors_loop.py --quick
    nice -n 10 python bench/slca_authors_loop.py --seeds 0 1 2 --threads 1
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import importlib.util
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from avalanche.benchmarks import nc_benchmark
from torch import nn

from neve.benchmarks import LabelledTensorDataset, fashion_mnist
from neve.models import pretrained_backbone

_SPEC = importlib.util.spec_from_file_location("neve_bench_slca", Path(__file__).with_name(
    "slca.py"))
bench = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(bench)

# (name, head_init, reset_optimizer) of the neve rows
NEVE_ARMS = (("neve_slca", None, False), ("neve_slca_head_init", "trunc_normal", False),
             ("neve_slca_fresh_opt", None, True),
             ("neve_slca_head_init_fresh_opt", "trunc_normal", True))


def new_block(dim: int, classes: int, generator: torch.Generator) -> nn.Linear:
    """A task's head block ``[D] -> [classes]``: weights TN(0, 0.02) (cut at +-2), bias 0."""
    block = nn.Linear(dim, classes)
    with torch.no_grad():
        nn.init.trunc_normal_(block.weight, std=0.02, generator=generator)
        block.bias.zero_()
    return block


def logits_of(blocks: nn.ModuleList, features: torch.Tensor) -> torch.Tensor:
    """``[B, K]``: the blocks' logits side by side, in task order."""
    return torch.cat([b(features) for b in blocks], dim=1)


def train_task(backbone: nn.Module, blocks: nn.ModuleList, x: torch.Tensor, y: torch.Tensor, *,
               epochs: int, batch_size: int, lr: float, scale: float, norm: str,
               generator: torch.Generator, device) -> list[float]:
    """One task of stage 1: new SGD over the backbone (lr * scale) and the last block (lr).

    ``y``: ``[N]`` labels within the task (0 .. task size - 1). The loss is the
    cross-entropy of the last block's logits; old blocks are frozen (not in the
    optimizer). Returns the mean loss of each epoch.
    """
    head = blocks[-1]
    optimizer = torch.optim.SGD(
        [{"params": list(backbone.parameters()), "lr": lr * scale},
         {"params": list(head.parameters()), "lr": lr}],
        lr=lr, momentum=0.9, weight_decay=5e-4)
    losses = []
    for _ in range(epochs):
        backbone.train(norm == "train")
        head.train()
        order = torch.randperm(x.shape[0], generator=generator)
        total = 0.0
        for start in range(0, x.shape[0], batch_size):
            index = order[start:start + batch_size]
            xb, yb = x[index].to(device), y[index].to(device)
            loss = F.cross_entropy(head(backbone(xb)), yb)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item() * index.numel()
        losses.append(total / x.shape[0])
    backbone.eval()
    return losses


def class_gaussians(features: torch.Tensor, labels: torch.Tensor, classes: list[int]):
    """Per class (in ``classes`` order): float64 mean ``[D]`` and covariance + 1e-4 I ``[D, D]``."""
    out = []
    for c in classes:
        rows = features[labels == c].double()
        cov = torch.cov(rows.T) + 1e-4 * torch.eye(rows.shape[1], dtype=torch.float64)
        out.append((rows.mean(0), cov))
    return out


def align(blocks: nn.ModuleList, gaussians: list, task_sizes: list[int], *, samples: int,
          epochs: int, batch_size: int, shrink: bool, generator: torch.Generator,
          device) -> list[float]:
    """Stage 2 (classifier alignment, paper Eq. 3) on all blocks, in place.

    ``gaussians[i]``: (mean, covariance) of global class i (task order). Returns
    the mean loss of each epoch.
    """
    params = list(blocks.parameters())
    optimizer = torch.optim.SGD(params, lr=0.01, momentum=0.9, weight_decay=5e-4)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    tasks = len(task_sizes)
    task_of = [t for t, n in enumerate(task_sizes) for _ in range(n)]
    factors = [torch.linalg.cholesky(cov).float() for _, cov in gaussians]
    bounds = np.cumsum([0, *task_sizes])
    losses = []
    for _ in range(epochs):
        xs, ys = [], []
        for c, ((mean, _), factor) in enumerate(zip(gaussians, factors, strict=True)):
            centre = mean * (0.9 + 0.1 * (task_of[c] + 1) / tasks) if shrink else mean
            z = torch.randn(samples, factor.shape[0], generator=generator)
            xs.append(centre.float() + z @ factor.T)
            ys.append(torch.full((samples,), c, dtype=torch.long))
        order = torch.randperm(len(gaussians) * samples, generator=generator)
        x, y = torch.cat(xs)[order].to(device), torch.cat(ys)[order].to(device)
        total = 0.0
        for start in range(0, x.shape[0], batch_size):
            logits = logits_of(blocks, x[start:start + batch_size])
            norms = torch.cat([logits[:, a:b].norm(dim=1, keepdim=True) + 1e-7
                               for a, b in zip(bounds[:-1], bounds[1:], strict=True)], dim=1)
            loss = F.cross_entropy(logits / norms.mean(1, keepdim=True) / 0.1,
                                   y[start:start + batch_size])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item() * logits.shape[0]
        scheduler.step()
        losses.append(total / x.shape[0])
    return losses


@torch.no_grad()
def accuracy(blocks: nn.ModuleList, features: torch.Tensor, labels: torch.Tensor, device) -> float:
    return float((logits_of(blocks, features.to(device)).argmax(1).cpu() == labels).float().mean())


def authors_loop(bm, train: LabelledTensorDataset, test: LabelledTensorDataset,
                 backbone: nn.Module, args, device, seed: int) -> dict:
    """The authors' procedure over ``bm``'s class order; accuracies per task and a trace."""
    torch.manual_seed(seed)  # drop-connect in train mode
    generator = torch.Generator().manual_seed(seed)
    backbone = copy.deepcopy(backbone).to(device)
    blocks = nn.ModuleList().to(device)
    order: list[int] = []  # global class index -> original label
    gaussians: list = []
    sizes: list[int] = []
    variants = {"ca": (256, True), "ca_noshrink": (256, False), "ca_neve_batch": (None, False)}
    acc: dict[str, list[float]] = {"none": [], **{v: [] for v in variants}}
    trace: dict = {"stage1_losses": [], "alignment_losses": []}
    for k, exp in enumerate(bm.train_stream):
        classes = sorted(int(c) for c in exp.classes_in_this_experience)
        order += classes
        sizes.append(len(classes))
        lookup = torch.full((max(order) + 1,), -1, dtype=torch.long)
        lookup[torch.tensor(order)] = torch.arange(len(order))
        mask = torch.isin(train.targets, torch.tensor(classes))
        x, y = train.data[mask], lookup[train.targets[mask]]
        for p in blocks.parameters():
            p.requires_grad_(False)
        blocks.append(new_block(args.feature_dim, len(classes), generator).to(device))
        trace["stage1_losses"].append(train_task(
            backbone, blocks, x, y - sum(sizes[:-1]), epochs=args.epochs,
            batch_size=args.batch_size, lr=args.lr, scale=args.backbone_lr_scale,
            norm=args.norm, generator=generator, device=device))
        for p in blocks.parameters():
            p.requires_grad_(True)
        if k == 0:
            trace["task1_head"] = {"weight_norm": float(blocks[0].weight.detach().norm()),
                                   "bias": blocks[0].bias.detach().tolist()}
        feats, labels = bench.feats(backbone, LabelledTensorDataset(x, y), device)
        gaussians += class_gaussians(feats, labels, list(range(sum(sizes[:-1]), sum(sizes))))
        seen = torch.isin(test.targets, torch.tensor(order))
        test_x, test_y = bench.feats(backbone, LabelledTensorDataset(
            test.data[seen], lookup[test.targets[seen]]), device)
        acc["none"].append(accuracy(blocks, test_x, test_y, device))
        for name, (batch, shrink) in variants.items():
            if k == 0:  # the authors align from the second task on
                acc[name].append(acc["none"][0])
                continue
            aligned = copy.deepcopy(blocks)  # the unaligned head stays for the next task
            samples = len(gaussians) * args.samples_per_class
            losses = align(aligned, gaussians, sizes, samples=args.samples_per_class,
                           epochs=args.alignment_epochs,
                           batch_size=batch or bench.alignment_batch_size(samples, None, 32),
                           shrink=shrink, generator=torch.Generator().manual_seed(seed + k + 1),
                           device=device)
            if name == "ca":
                trace["alignment_losses"].append(losses)
            acc[name].append(accuracy(aligned, test_x, test_y, device))
    return {"acc": acc, "trace": trace}


def run_seed(seed: int, backbone: nn.Module, full: tuple, args, device) -> dict:
    """Every row for one seed: the authors' loop and the neve arms on the same data."""
    train = bench.preprocessed(full[0], args.train_per_class, seed, args.input_size)
    test = bench.preprocessed(full[1], args.test_per_class, seed, args.input_size)
    bm = nc_benchmark(train, test, n_experiences=5, task_labels=False, seed=seed)
    rows, seconds, traces = {}, {}, {}
    if "authors" in args.sides:
        t = time.perf_counter()
        run = authors_loop(bm, train, test, backbone, args, device, seed)
        for variant, values in run["acc"].items():
            name = "authors_loop" + ("" if variant == "none" else "_" + variant)
            rows[f"{name}[{args.norm}]"] = bench.scores(values)
        traces["authors_loop"] = run["trace"]
        seconds["authors_loop"] = round(time.perf_counter() - t, 1)
    for name, head_init, reset in NEVE_ARMS if "neve" in args.sides else ():
        if name not in args.neve_arms:
            continue
        t = time.perf_counter()
        run = bench.run_arm(bm, backbone, args.feature_dim, args, device, seed=seed, lr=args.lr,
                            scale=args.backbone_lr_scale, norm="eval", head_init=head_init,
                            reset_optimizer=reset)
        size = args.alignment_batch_size
        batch = "" if size is None else f" ca_batch={size}"
        rows[f"{name}[eval]{batch}"] = bench.scores(run["acc"]["ca"])
        rows[f"{name.replace('slca', 'slow_learner')}[eval]{batch}"] = bench.scores(
            run["acc"]["none"])  # the same training as without ca_batch; named apart for --merge
        seconds[name] = round(time.perf_counter() - t, 1)
    print(f"seed {seed}: {seconds}", file=sys.stderr, flush=True)
    return {"seed": seed, "rows": rows, "seconds": seconds, "trace": traces}


def summarise(per_seed: list[dict]) -> dict:
    names = list(dict.fromkeys(n for s in per_seed for n in s["rows"]))
    return {n: bench.summarise([s["rows"][n] for s in per_seed if n in s["rows"]])
            for n in names}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    bench.add_run_arguments(p, threads=1)
    p.add_argument("--merge", nargs="+", help="summarise the JSON outputs of earlier runs")
    p.add_argument("--norm", default="eval", choices=["eval", "train"],
                   help="the authors' loop's backbone mode (train: their code as written)")
    p.add_argument("--sides", nargs="+", default=["authors", "neve"], choices=["authors", "neve"])
    p.add_argument("--neve-arms", nargs="+", default=[a[0] for a in NEVE_ARMS],
                   choices=[a[0] for a in NEVE_ARMS])
    args = p.parse_args(argv)
    if args.merge:
        per_seed = [s for f in args.merge for s in json.loads(Path(f).read_text())["per_seed"]]
        report = {"merged": args.merge, "arms": summarise(per_seed), "per_seed": per_seed}
        print(json.dumps(report, indent=1))
        return report
    bench.quick(args)
    args.feature_dim = 1280
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    wall = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):  # the weights package prints a line
        backbone = pretrained_backbone("efficientnet-lite0", input_size=args.input_size)
    full = fashion_mnist()
    per_seed = [run_seed(seed, backbone, full, args, device) for seed in args.seeds]
    report = {
        "benchmark": "Split Fashion-MNIST 5x2, class-balanced subsets (bench/slca.py's data)",
        "backbone": f"efficientnet-lite0 (ImageNet) at {args.input_size} px",
        "settings": vars(args),
        "device": str(device),
        "arms": summarise(per_seed),
        "per_seed": per_seed,
        "wall_s": round(time.perf_counter() - wall, 1),
    }
    print(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
