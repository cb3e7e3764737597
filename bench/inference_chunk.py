"""A CPU feature pass in parts of a few images against the whole batch at once; JSON.

    python bench/inference_chunk.py            # 32, 64 and 224 px, 1 thread
    python bench/inference_chunk.py --quick    # 32 px only, 1 s per timing

``neve.models.Backbone`` runs an inference pass on the CPU (eval mode, no autograd
graph) in parts of at most ``cpu_chunk_pixels`` image pixels. This bench times the
pretrained EfficientNet-Lite0 on random images, a no-grad eval-mode forward of one
batch (``--batch`` images at 32 px; a quarter of it at 64 px, a sixteenth at
224 px), with ``cpu_chunk_pixels`` set to each of ``2**15 ... 2**19`` and to ``None``
(the whole batch at once). Per input size it prints, for each setting, the images
per part, milliseconds per image (the best of ``--repeats`` timings) and the
speed-up against the whole batch, and the largest relative difference
``max |a - b| / max |a|`` between the parts' features and the whole batch's.
``default`` names the library's setting.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from neve.models import Backbone, pretrained_backbone

SETTINGS = (None, 2**15, 2**16, 2**17, 2**18, 2**19)


def _ms_per_image(backbone: Backbone, x: torch.Tensor, seconds: float, repeats: int) -> float:
    with torch.no_grad():
        backbone(x)
        best = float("inf")
        for _ in range(repeats):
            start, images = time.perf_counter(), 0
            while time.perf_counter() - start < seconds or images == 0:
                backbone(x)
                images += len(x)
            best = min(best, (time.perf_counter() - start) / images)
    return best * 1e3


def measure(size: int, batch: int, seconds: float, repeats: int) -> dict:
    """Every setting's timing at ``size`` px on ``batch`` random images."""
    backbone = pretrained_backbone("efficientnet-lite0", input_size=size).eval()
    x = backbone.transform(torch.rand(batch, 3, size, size, generator=torch.Generator()
                                      .manual_seed(0)))
    rows, whole = [], None
    for pixels in SETTINGS:
        backbone.cpu_chunk_pixels = pixels
        with torch.no_grad():
            features, part = backbone(x), backbone.cpu_chunk(x)
        whole = features if pixels is None else whole
        rows.append({"cpu_chunk_pixels": pixels, "images_per_part": part,
                     "ms_per_image": _ms_per_image(backbone, x, seconds, repeats),
                     "difference": float((features - whole).abs().max() / whole.abs().max())})
    for row in rows:
        row["speedup"] = rows[0]["ms_per_image"] / row["ms_per_image"]
    return {"input_size": size, "batch": batch, "settings": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=1024, help="images at 32 px")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=3.0, help="per timing")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="32 px only, 1 s per timing")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    sizes = {32: args.batch} if args.quick else {32: args.batch, 64: args.batch // 4,
                                                 224: max(1, args.batch // 16)}
    seconds = 1.0 if args.quick else args.seconds
    started = time.perf_counter()
    report = {"threads": args.threads, "default": Backbone.cpu_chunk_pixels,
              "sizes": [measure(size, batch, seconds, args.repeats)
                        for size, batch in sizes.items()]}
    report["seconds"] = time.perf_counter() - started
    json.dump(report, sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main()
