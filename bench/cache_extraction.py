"""Per-image CPU time of building a top-block fine-tune's cache: decode + resize (the test
transform) + the backbone's bottom blocks below the cut, on real photos, as the engine does it.

Usage: python bench/cache_extraction.py --data-root ../shared/data/voc2007-full [--backbone efficientnet_lite2]
       [--image-size 448] [--cut 18] [--images 100] [--batch 1] [--threads 2]
Prints the median / mean per-image time of the decode + transform, the bottom forward (batch
``--batch``, channels_last, inference mode) and the whole, and the cache's size per view; the load
average before and after (the CPU may be shared: read the medians).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere
from mlc.data import build_dataset, build_transforms  # noqa: E402
from mlc.models.backbones import create_backbone  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", required=True)
    parser.add_argument("--dataset", default="voc2007")
    parser.add_argument("--split", default="train")
    parser.add_argument("--backbone", default="efficientnet_lite2")
    parser.add_argument("--image-size", type=int, default=448)
    parser.add_argument("--cut", type=int, default=18, help="bottom = blocks below this one (-1: the whole backbone)")
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    backbone = create_backbone(args.backbone).eval().to(memory_format=torch.channels_last)
    part = backbone if args.cut < 0 else (lambda x: backbone.forward_bottom(x, args.cut))  # noqa: E731
    norm = backbone.normalization
    dataset = build_dataset(args.dataset, args.data_root, args.split)
    transform = build_transforms(args.image_size, train=False, mean=norm.mean, std=norm.std)
    n = min(args.images, len(dataset))
    decode, forward, shape = [], [], None
    with torch.inference_mode():
        part(torch.zeros(args.batch, 3, args.image_size, args.image_size).contiguous(memory_format=torch.channels_last))
        for start in range(0, n, args.batch):
            t0 = time.perf_counter()
            x = torch.stack([transform(dataset.load_image(i)) for i in range(start, min(n, start + args.batch))])
            t1 = time.perf_counter()
            y = part(x.contiguous(memory_format=torch.channels_last))
            t2 = time.perf_counter()
            decode.append((t1 - t0) / len(x))
            forward.append((t2 - t1) / len(x))
            shape = tuple(y.shape[1:])
    per_view_mb = len(dataset) * torch.Size(shape).numel() * 4 / 2**20
    total = [a + b for a, b in zip(decode, forward)]
    print(f"{args.backbone} @ {args.image_size}px, {'whole backbone' if args.cut < 0 else f'bottom below block {args.cut}'}, "
          f"batch {args.batch}, {args.threads} threads, {n} {args.split} images of {args.data_root}")
    print("| step | median ms/img | mean ms/img |\n|---|---:|---:|")
    for name, t in (("decode + resize", decode), ("bottom forward", forward), ("total", total)):
        print(f"| {name} | {1000 * statistics.median(t):.1f} | {1000 * statistics.mean(t):.1f} |")
    print(f"cached map {shape} float32: {per_view_mb:.0f} MiB per view of the {len(dataset)} {args.split} images; "
          f"{len(dataset) * statistics.median(total) / 60:.1f} min per view at the median")
    print(f"load average before {load_before[0]:.2f}, after {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
