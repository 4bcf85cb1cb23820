"""Size and CPU speed of the five variants on the packaged EfficientNet-Lite0 backbone (VOC, 20 labels).

Usage: python bench/model_speed.py [--runs 20] [--warmup 3] [--batch 16] [--threads N]
Prints a Markdown table: parameters (total and head = everything but the backbone) and forward
time per 224 px image under ``torch.inference_mode()``, batch 1 (median and min of ``--runs``) and
per image at ``--batch`` (median of ``--runs // 4`` batches); plus the head alone on precomputed
features, since the shared backbone dominates. Other processes may share the CPU, so the variants
are timed round-robin (a busy spell slows all of them alike), medians are reported, and the load
average is printed before and after. Offline: label statistics come from random labels.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere
from mlc.data import VOC_CLASSES  # noqa: E402
from mlc.embeddings import label_embeddings  # noqa: E402
from mlc.models import create_model, list_models  # noqa: E402
from mlc.stats import label_statistics  # noqa: E402



def _round_robin(fns: dict[str, Callable[[], object]], runs: int, warmup: int) -> dict[str, list[float]]:
    """Seconds of ``runs`` calls of each function, interleaved across functions, after ``warmup`` calls each."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for i in range(warmup + runs):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            if i >= warmup:
                times[name].append(time.perf_counter() - start)
    return times


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    labels = (rng.random((2500, len(VOC_CLASSES))) < 0.1).astype(np.int8)
    common = {
        "classes": VOC_CLASSES,
        "backbone": "efficientnet_lite0",
        "pretrained": True,
        "image_size": args.size,
        "label_stats": label_statistics(labels, VOC_CLASSES),
        "embeddings": label_embeddings(VOC_CLASSES, "glove50"),
    }
    one = torch.randn(1, 3, args.size, args.size)
    batch = torch.randn(args.batch, 3, args.size, args.size)

    batch_runs = max(args.runs // 4, 1)
    print(f"CPU, torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} cores; "
          f"{args.size} px; batch 1: {args.runs} runs, batch {args.batch}: {batch_runs} runs, variants "
          f"interleaved, after {args.warmup} warm-up runs; load average before: {_load()}\n")
    models = {name: create_model(name, **common).eval() for name in list_models()}
    with torch.inference_mode():
        features = next(iter(models.values())).forward_features(one)  # same backbone and weights in all five
        t1 = _round_robin({n: (lambda m=m: m(one)) for n, m in models.items()}, args.runs, args.warmup)
        tb = _round_robin({n: (lambda m=m: m(batch)) for n, m in models.items()}, batch_runs, 1)
        th = _round_robin(
            {n: (lambda m=m: m.forward_head(features)) for n, m in models.items()}, args.runs, args.warmup
        )

    print(f"| variant | parameters | head parameters | batch 1, median (min) ms / image "
          f"| batch {args.batch}, ms / image | head only, batch 1, ms |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, model in models.items():
        total = sum(p.numel() for p in model.parameters())
        head = sum(p.numel() for p in model.head_parameters())
        b1, b1_min = statistics.median(t1[name]), min(t1[name])
        per_image = statistics.median(tb[name]) / args.batch
        print(f"| {name} | {total / 1e6:.2f} M | {head / 1e6:.3f} M | {1e3 * b1:.1f} ({1e3 * b1_min:.1f}) "
              f"| {1e3 * per_image:.1f} | {1e3 * statistics.median(th[name]):.2f} |")
    print(f"\nload average after: {_load()}")


if __name__ == "__main__":
    main()
