"""Training throughput: the real data pipeline against the backbone's raw forward + backward.

  python bench/train_throughput.py --data-root ../shared/data/voc2007 [--variants baseline ggnn ssgrl mlgcn gcam]
      [--batch-sizes 32 64] [--steps 50] [--num-workers 8]
  CPU smoke check: ... --backbone efficientnet_lite0 --steps 3 --warmup 1 --num-workers 1 --device cpu

One row per (variant, batch size). "raw" trains on one synthetic batch kept on the device (no
decoding, no augmentation, no copies); "with pipeline" runs the trainer's own stage-2 step (all
layers) on real images decoded and augmented by ``--num-workers`` DataLoader workers. Both at the
same batch size, bf16 autocast and channels_last on CUDA. "data pipeline / worker" is what one
DataLoader worker delivers with the trainer's train transform and no model at all (decode +
augment + collate, first batch excluded; measured once per batch size, the transform is the same
for every variant), and "workers for raw" = raw / that: how many workers it takes to keep up.
The goal on a GPU: with pipeline >= 85% of raw.
"""
from __future__ import annotations

import argparse
import gc
import math
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mlc.models import reference_model  # noqa: E402
from train.config import TrainConfig  # noqa: E402
from train.distributed import DistEnv, pick_device  # noqa: E402
from train.engine import Trainer  # noqa: E402


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_steps(step, batches, warmup: int, steps: int, batch_size: int, device: torch.device) -> float:
    """Images per second over ``steps`` steps after ``warmup`` untimed ones."""
    iterator = iter(batches)
    for _ in range(warmup):
        step(next(iterator))
    synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        step(next(iterator))
    synchronize(device)
    return steps * batch_size / (time.perf_counter() - start)


def endless(trainer: Trainer, stage):
    epoch = 0
    while True:
        yield from trainer.train_batches(stage, epoch)
        epoch += 1


def data_pipeline_per_worker(trainer: Trainer, batch_size: int, batches: int) -> float:
    """Images / s from one DataLoader worker running the train transform alone (no model, no device)."""
    dataset = trainer.splits.fit.with_transform(trainer.train_transform)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=1,
                        generator=torch.Generator().manual_seed(0))
    iterator = iter(loader)
    next(iterator)  # worker start-up
    start, count = time.perf_counter(), 0
    for _ in range(batches):
        count += next(iterator)[0].shape[0]
    return count / (time.perf_counter() - start)


def build_trainer(args: argparse.Namespace, variant: str, batch_size: int, device: torch.device) -> Trainer:
    config = TrainConfig(
        variant=variant, dataset=args.dataset, data_root=args.data_root, backbone=args.backbone,
        image_size=args.image_size, batch_size=batch_size, num_workers=args.num_workers,
        compile=args.compile, stage1_epochs=0, stage2_epochs=1, output_dir="/tmp/mlc-bench", group="throughput",
    ).validate()
    trainer = Trainer(config, DistEnv(device=device))
    trainer.build()
    return trainer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", required=True)
    parser.add_argument("--dataset", default="voc2007")
    parser.add_argument("--variants", "--variant", nargs="+", default=None,
                        help="default: the registry's reference variant")
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--batch-sizes", "--batch-size", nargs="+", type=int, default=[32])
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--num-workers", type=int, default=8)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--loader-batches", type=int, default=None,
                        help="batches timed for the per-worker data pipeline rate (default: max(steps, 5))")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    loader_batches = args.loader_batches or max(args.steps, 5)

    device = pick_device(args.device)
    rows = []
    autocast = False
    for batch_size in args.batch_sizes:
        per_worker = None
        for variant in args.variants or [reference_model()]:
            trainer = build_trainer(args, variant, batch_size, device)
            autocast = trainer.autocast
            stage = trainer.stages[1]
            trainer.enter_stage(stage)
            if per_worker is None:
                per_worker = data_pipeline_per_worker(trainer, batch_size, loader_batches)

            images = torch.randn(batch_size, 3, args.image_size, args.image_size, device=device)
            targets = (torch.rand(batch_size, len(trainer.model.classes), device=device) < 0.1).float()
            synthetic = iter(lambda: {"images": images, "targets": targets}, None)
            raw = timed_steps(trainer.train_step, synthetic, args.warmup, args.steps, batch_size, device)
            pipeline = timed_steps(trainer.train_step, endless(trainer, stage), args.warmup, args.steps, batch_size,
                                   device)
            rows.append((variant, batch_size, raw, pipeline, per_worker))
            print(f"[{variant} batch {batch_size}] raw {raw:.1f} img/s, with pipeline {pipeline:.1f} img/s, "
                  f"data pipeline {per_worker:.1f} img/s per worker", file=sys.stderr, flush=True)
            del trainer, images, targets, synthetic
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"\n{args.backbone} @ {args.image_size}px, {name}, bf16={autocast}, compile={args.compile}, "
          f"workers={args.num_workers}, {args.steps} timed steps after {args.warmup}\n")
    print("| variant | batch | raw step (img/s) | with pipeline (img/s) | pipeline / raw "
          "| data pipeline / worker (img/s) | workers for raw |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for variant, batch_size, raw, pipeline, per_worker in rows:
        print(f"| {variant} | {batch_size} | {raw:.1f} | {pipeline:.1f} | {100 * pipeline / raw:.0f}% "
              f"| {per_worker:.1f} | {math.ceil(raw / per_worker)} |")


if __name__ == "__main__":
    main()
