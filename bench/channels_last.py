"""Channels-last memory order in the backbone's forward: time per image and difference; JSON.

    python bench/channels_last.py               # batches 64 and 128, 32 px, 1 thread
    python bench/channels_last.py --quick       # batch 64 only, 1 s per timing

``neve.models.Backbone`` hands its network CPU images in channels-last order. This
bench times the pretrained EfficientNet-Lite0 on random 32 px images, with the input
in the default (NCHW) order and in channels-last order, for three kinds of work:

* ``features``: a no-grad forward in eval mode (the feature passes of ACIL, SLCA's
  statistics, the Curriculum Designer, the episode encoders);
* ``frozen_step``: the frozen backbone's forward plus a linear head's forward and
  backward (SLCA with a frozen backbone, a linear probe);
* ``finetune_step``: forward and backward through the whole backbone in train mode
  (SLCA fine-tuned).

For each it prints milliseconds per image (the best of ``--repeats`` timings), the
ratio NCHW / channels-last, and the largest relative difference (``max |a - b| / max |a|``,
not the norm ratio of ``bench/distributed.py``) between the two orders
of the features (and, for ``finetune_step``, of all the backbone's gradients taken as
one vector): only the order in which floats are summed differs. ``floor_threads`` is
the same difference between NCHW on ``--threads`` and on one thread more, the
rounding that changing the thread count alone brings.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time

import torch


def _step(kind: str, net: torch.nn.Module, head: torch.nn.Module, x: torch.Tensor,
          y: torch.Tensor) -> torch.Tensor:
    if kind == "features":
        with torch.no_grad():
            return net(x).flatten(1)
    out = net(x).flatten(1)
    torch.nn.functional.cross_entropy(head(out), y).backward()
    return out.detach()


def _prepare(kind: str, net: torch.nn.Module) -> None:
    net.requires_grad_(kind == "finetune_step")
    net.train(kind == "finetune_step")


def _time(kind, net, head, x, y, seconds: float, repeats: int) -> float:
    """Best milliseconds per image over ``repeats`` timings of ``seconds`` each."""
    _step(kind, net, head, x, y)
    best = float("inf")
    for _ in range(repeats):
        start, images = time.perf_counter(), 0
        while time.perf_counter() - start < seconds:
            net.zero_grad(set_to_none=True)
            head.zero_grad(set_to_none=True)
            _step(kind, net, head, x, y)
            images += x.shape[0]
        best = min(best, 1000 * (time.perf_counter() - start) / images)
    return best


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def _difference(kind, net, head, x, y, order=torch.channels_last, threads=None) -> float:
    """Largest relative difference of NCHW and ``order`` (features, gradients).

    ``threads``: the second run's thread count (the first runs on the current one).
    """
    results, current = [], torch.get_num_threads()
    for memory, count in ((torch.contiguous_format, current), (order, threads or current)):
        net.zero_grad(set_to_none=True)
        head.zero_grad(set_to_none=True)
        torch.manual_seed(0)  # dropout, if any, draws the same masks
        torch.set_num_threads(count)
        out = _step(kind, net, head, x.contiguous(memory_format=memory), y)
        grads = [p.grad.clone() for p in net.parameters() if p.grad is not None]
        results.append((out, grads))
    torch.set_num_threads(current)
    (a, ga), (b, gb) = results
    if not ga:
        return _relative(b, a)
    # the gradients as one vector: in train mode a bias feeding a batch norm has a
    # gradient of rounding size only (the norm cancels a shift), so a per-tensor
    # ratio would be rounding over rounding
    return max(_relative(b, a), _relative(torch.cat([g.flatten() for g in gb]),
                                          torch.cat([g.flatten() for g in ga])))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--input-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from neve.models import pretrained_backbone

    with contextlib.redirect_stdout(sys.stderr):  # the weights package prints a line
        net = pretrained_backbone("efficientnet-lite0", input_size=args.input_size).net
    head = torch.nn.Linear(1280, 10)
    batches = (64,) if args.quick else (64, 128)
    seconds = 1.0 if args.quick else 2.0
    generator = torch.Generator().manual_seed(0)
    out = {"threads": args.threads, "input_size": args.input_size, "torch": torch.__version__,
           "work": {}}
    for kind in ("features", "frozen_step", "finetune_step"):
        _prepare(kind, net)
        out["work"][kind] = {}
        for batch in batches:
            x = torch.randn(batch, 3, args.input_size, args.input_size, generator=generator)
            y = torch.randint(0, 10, (batch,), generator=generator)
            nchw = _time(kind, net, head, x, y, seconds, args.repeats)
            last = _time(kind, net, head, x.contiguous(memory_format=torch.channels_last),
                         y, seconds, args.repeats)
            out["work"][kind][str(batch)] = {
                "nchw_ms_per_image": nchw, "channels_last_ms_per_image": last,
                "speedup": nchw / last,
                "largest_relative_difference": _difference(kind, net, head, x, y),
                # the floor: NCHW on one more thread, only the summation order changes
                "floor_threads": _difference(kind, net, head, x, y, torch.contiguous_format,
                                             args.threads + 1)}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
