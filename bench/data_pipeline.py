"""Cost of the data pipeline per image: decode, test transform, train augmentation; and per worker.

  python bench/data_pipeline.py [--data-root /work/shared/data/voc2007] [--dataset voc2007]
                                [--images 400] [--rounds 3] [--loader-batches 12]

Single thread (``torch.set_num_threads(1)``, OpenCV single-threaded too), real photos of the split:
ms per image for each step, the earlier pipeline (``legacy``: torchvision v2 Resize -> Flip ->
ToDtype -> RandomRotation -> ColorJitter -> RandomGamma -> Normalize, kept below verbatim) against
the current ``mlc.data.build_transforms``. Each step is timed over the same images ``--rounds``
times, interleaving legacy and current, and the fastest round is reported (other processes may
share the CPU). Then images / s of one DataLoader worker (batch 32, decode + train transform +
collate, what one worker hands the trainer), after the first batch (worker start-up) is discarded.
Prints Markdown tables.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere
from mlc.data import IMAGENET_MEAN, IMAGENET_STD, build_dataset, build_transforms  # noqa: E402
from mlc.data.transforms import EnsureRGB  # noqa: E402


# ---------------------------------------------------------------------- the earlier pipeline (legacy)
@dataclass(frozen=True)
class LegacyRandomGamma:
    gamma_range: tuple[float, float] = (0.8, 1.25)

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        low, high = (math.log(g) for g in self.gamma_range)
        return F.adjust_gamma(image, math.exp(low + (high - low) * torch.rand(()).item()))


def legacy_transforms(
    image_size: int, train: bool, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
    rotation: float = 45.0, brightness: float = 0.2, contrast: float = 0.2,
    gamma: tuple[float, float] | None = (0.8, 1.25), hflip: float = 0.5,
) -> v2.Compose:
    """`build_transforms` as it was before the fused pipeline (all float32 torchvision v2 steps)."""
    steps: list[object] = [EnsureRGB(), v2.PILToTensor(), v2.Resize((image_size, image_size), antialias=True)]
    if train and hflip > 0:
        steps.append(v2.RandomHorizontalFlip(p=hflip))
    steps.append(v2.ToDtype(torch.float32, scale=True))
    if train:
        if rotation > 0:
            steps.append(v2.RandomRotation(rotation, interpolation=v2.InterpolationMode.BILINEAR,
                                           fill=[float(m) for m in mean]))
        if brightness > 0 or contrast > 0:
            steps.append(v2.ColorJitter(brightness=brightness, contrast=contrast))
        if gamma is not None and gamma[0] != gamma[1]:
            steps.append(LegacyRandomGamma((float(gamma[0]), float(gamma[1]))))
    steps.append(v2.Normalize(mean=list(mean), std=list(std)))
    return v2.Compose(steps)


# ---------------------------------------------------------------------------------------- timing
def per_item_ms(fns: dict[str, Callable[[object], object]], items: Sequence[object], rounds: int) -> dict[str, float]:
    """Fastest round's ms per item for each function; rounds interleave the functions."""
    best = {name: math.inf for name in fns}
    for fn in fns.values():
        fn(items[0])  # warm-up (lazy imports, allocator)
    for _ in range(rounds):
        for name, fn in fns.items():
            start = time.perf_counter()
            for item in items:
                fn(item)
            best[name] = min(best[name], (time.perf_counter() - start) * 1e3 / len(items))
    return best


def loader_images_per_s(dataset, batch_size: int, batches: int, seed: int = 0) -> float:
    """Images / s delivered by one DataLoader worker, first batch (start-up) excluded."""
    generator = torch.Generator().manual_seed(seed)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=1, generator=generator,
                        prefetch_factor=2, persistent_workers=False)
    iterator = iter(loader)
    next(iterator)
    start = time.perf_counter()
    count = 0
    for _ in range(batches):
        images, _ = next(iterator)
        count += images.shape[0]
    return count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", default="/work/shared/data/voc2007")
    parser.add_argument("--dataset", default="voc2007")
    parser.add_argument("--split", default="train")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--images", type=int, default=400, help="images timed per step and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--loader-batches", type=int, default=12, help="batches timed per DataLoader run")
    args = parser.parse_args()

    torch.set_num_threads(1)
    import cv2

    cv2.setNumThreads(1)
    torch.manual_seed(0)
    dataset = build_dataset(args.dataset, args.data_root, args.split)
    indices = list(range(min(args.images, len(dataset))))
    size = args.image_size
    legacy_test, legacy_train = legacy_transforms(size, train=False), legacy_transforms(size, train=True)
    test, train = build_transforms(size, train=False), build_transforms(size, train=True)
    draft = getattr(train, "draft_size", None)

    decode = per_item_ms({
        "legacy": dataset.load_image,
        "current": lambda i: dataset.load_image(i, draft) if draft else dataset.load_image(i),
    }, indices, args.rounds)
    images = [dataset.load_image(i) for i in indices]
    test_ms = per_item_ms({"legacy": legacy_test, "current": test}, images, args.rounds)
    train_ms = per_item_ms({"legacy": legacy_train, "current": train}, images, args.rounds)
    loader = {
        "legacy": loader_images_per_s(dataset.with_transform(legacy_train), args.batch_size, args.loader_batches),
        "current": loader_images_per_s(dataset.with_transform(train), args.batch_size, args.loader_batches),
    }

    sizes = sorted({im.size for im in images}, key=lambda s: s[0] * s[1])
    print(f"\n{args.dataset} {args.split}, {len(indices)} images ({sizes[0][0]}x{sizes[0][1]} .. "
          f"{sizes[-1][0]}x{sizes[-1][1]}) -> {size}px; {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores, torch {torch.__version__}, best of {args.rounds} rounds\n")
    print("| single thread, ms / image | legacy | current | speed-up |")
    print("|---|---:|---:|---:|")
    rows = [("decode (JPEG -> RGB; current: with the train transform's draft)", decode),
            ("test transform (resize + normalize)", test_ms),
            ("train augmentation (resize + flip + rotate + colour + normalize)", train_ms)]
    for name, ms in rows:
        print(f"| {name} | {ms['legacy']:.2f} | {ms['current']:.2f} | {ms['legacy'] / ms['current']:.1f}x |")
    total = {k: decode[k] + train_ms[k] for k in decode}
    print(f"| decode + train augmentation | {total['legacy']:.2f} | {total['current']:.2f} | "
          f"{total['legacy'] / total['current']:.1f}x |")
    print(f"\n| DataLoader, 1 worker, batch {args.batch_size}, train transform | legacy | current | speed-up |")
    print("|---|---:|---:|---:|")
    print(f"| images / s per worker | {loader['legacy']:.0f} | {loader['current']:.0f} | "
          f"{loader['current'] / loader['legacy']:.1f}x |")


if __name__ == "__main__":
    main()
