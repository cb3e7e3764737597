"""Shared glue of the reproduction scripts: arguments, datasets on disk or fake, JSON report.

Every script takes ``--data-root`` (the folder torchvision's dataset classes read,
``download=False``), ``--weights`` (``pretrained``, ``none`` or a local
``.pth``/``.safetensors`` file), ``--device``, ``--seed`` and ``--smoke``
(torchvision ``FakeData`` in the dataset's shape, random weights, tiny sizes: a
check that the protocol runs, not a result).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
from avalanche.core import SupervisedPlugin

from neve.benchmarks import LabelledTensorDataset
from neve.models import pretrained_backbone

SHAPES = {"cifar10": (3, 32, 32, 10), "cifar100": (3, 32, 32, 100), "omniglot": (1, 28, 28, 659)}


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--data-root", default="data", help="folder of the torchvision datasets")
    p.add_argument("--weights", default="pretrained",
                   help="'pretrained' (library download), 'none' (random) or a local file")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--smoke", action="store_true",
                   help="FakeData in the dataset's shape, random weights, tiny sizes")
    p.add_argument("--out", default=None, help="also write the JSON report to this file")
    return p


def weights_argument(args) -> str | None:
    """``None`` for random weights (always under ``--smoke``), else the path or 'pretrained'."""
    return None if args.smoke or str(args.weights).lower() == "none" else args.weights


def fake_dataset(name: str, per_class: int, classes: int, seed: int) -> LabelledTensorDataset:
    """``per_class`` FakeData images of each of ``classes`` classes, in the shape of ``name``."""
    from torchvision.datasets import FakeData
    from torchvision.transforms import ToTensor

    c, h, w, _ = SHAPES[name]
    fake = FakeData(per_class * classes, (c, h, w), classes, ToTensor(), random_offset=seed)
    x = torch.stack([fake[i][0] for i in range(len(fake))])
    y = torch.arange(classes).repeat(per_class)  # balanced labels
    return LabelledTensorDataset(x, y)


def real_dataset(name: str, root: str, train: bool):
    """A torchvision dataset read from ``root`` (no download), images as tensors in [0, 1]."""
    from torchvision import datasets
    from torchvision.transforms import Compose, Resize, ToTensor

    try:
        if name == "omniglot":
            ds = datasets.Omniglot(root, background=train, download=False,
                                   transform=Compose([Resize(28), ToTensor()]))
            ds.targets = [c for _, c in ds._flat_character_images]
            return ds
        cls = {"cifar10": datasets.CIFAR10, "cifar100": datasets.CIFAR100}[name]
        return cls(root, train=train, download=False, transform=ToTensor())
    except RuntimeError as err:
        sys.exit(f"{name} not found under --data-root {root!r} ({err}); "
                 "put the torchvision copy there, or run with --smoke")


def backbone(args, name: str, smoke_name: str, input_size: int | None = None,
             smoke_size: int = 32):
    """``name`` with ``--weights``, or under ``--smoke`` the small random ``smoke_name``."""
    if args.smoke:
        return pretrained_backbone(smoke_name, weights=None, input_size=smoke_size)
    return pretrained_backbone(name, weights=weights_argument(args), input_size=input_size)


class EpochLRDecay(SupervisedPlugin):
    """Multiply every group's lr by ``factor`` from epoch ``milestone`` of each experience."""

    def __init__(self, milestone: int, factor: float = 0.1) -> None:
        super().__init__()
        self.milestone, self.factor, self.decayed = milestone, factor, False

    def before_training_epoch(self, strategy, **kwargs) -> None:
        if strategy.clock.train_exp_epochs == self.milestone and not self.decayed:
            for group in strategy.optimizer.param_groups:
                group["lr"] *= self.factor
            self.decayed = True

    def after_training_exp(self, strategy, **kwargs) -> None:
        if self.decayed:
            for group in strategy.optimizer.param_groups:
                group["lr"] /= self.factor
            self.decayed = False


def _finite(value):
    """``value`` with NaN/inf floats replaced by None (valid JSON)."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def report(script: str, args, metrics: dict, paper: dict, protocol: dict, start: float) -> dict:
    """Print (and write with ``--out``) the metrics beside the paper's figures, as JSON."""
    out = {
        "script": script,
        "smoke": bool(args.smoke),
        "note": "smoke run: fake data and random weights; the figures mean nothing"
        if args.smoke else "real data",
        "protocol": protocol,
        "metrics": _finite(metrics),
        "paper": paper,
        "seed": args.seed,
        "device": str(args.device),
        "weights": str(weights_argument(args)),
        "seconds": round(time.perf_counter() - start, 1),
    }
    text = json.dumps(out, indent=2, default=float)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)
    return out
