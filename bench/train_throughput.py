"""Training throughput: the real data pipeline against the backbone's raw forward + backward.

  python bench/train_throughput.py --data-root ../shared/data/voc2007 [--variant baseline] [--steps 50]

"raw" trains on one synthetic batch kept on the device (no decoding, no augmentation, no copies);
"pipeline" runs the trainer's own stage-2 step (all layers) on real images decoded and augmented by
DataLoader workers. Both at the same batch size, bf16 autocast and channels_last on CUDA.
The goal on a GPU: pipeline >= 85% of raw.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", required=True)
    parser.add_argument("--dataset", default="voc2007")
    parser.add_argument("--variant", default="baseline")
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--num-workers", type=int, default=8)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()

    device = pick_device(args.device)
    config = TrainConfig(
        variant=args.variant, dataset=args.dataset, data_root=args.data_root, backbone=args.backbone,
        image_size=args.image_size, batch_size=args.batch_size, num_workers=args.num_workers,
        compile=args.compile, stage1_epochs=0, stage2_epochs=1, output_dir="/tmp/mlc-bench", group="throughput",
    ).validate()
    trainer = Trainer(config, DistEnv(device=device))
    trainer.build()
    stage = trainer.stages[1]
    trainer.enter_stage(stage)

    images = torch.randn(args.batch_size, 3, args.image_size, args.image_size, device=device)
    targets = (torch.rand(args.batch_size, len(trainer.model.classes), device=device) < 0.1).float()
    synthetic = iter(lambda: {"images": images, "targets": targets}, None)
    raw = timed_steps(trainer.train_step, synthetic, args.warmup, args.steps, args.batch_size, device)
    pipeline = timed_steps(trainer.train_step, endless(trainer, stage), args.warmup, args.steps, args.batch_size, device)

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"\n{args.variant} on {args.backbone} @ {args.image_size}px, batch {args.batch_size}, {name}, "
          f"bf16={trainer.autocast}, workers={args.num_workers}\n")
    print("| measurement | images / s |")
    print("|---|---:|")
    print(f"| raw forward + backward (synthetic batch on device) | {raw:.1f} |")
    print(f"| training with the data pipeline (decode + augment in workers) | {pipeline:.1f} |")
    print(f"| pipeline / raw | {100 * pipeline / raw:.0f}% |")


if __name__ == "__main__":
    main()
