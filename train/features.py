"""Frozen-backbone feature cache for stage 1.

While the backbone is frozen (eval mode, no augmentation) its feature maps are a fixed function of
each image, so computing them once and reusing them across epochs, and across the variants of a
run group, gives exactly the same training as recomputing them. G-CAM also needs the maps of the
mirrored and the rescaled image; those are cached beside the originals.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from mlc.data import MultiLabelDataset


def scale_images(images: torch.Tensor, size: int) -> torch.Tensor:
    """G-CAM's scale transform: the (normalised) image batch resized to size x size."""
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


@dataclass
class FeatureSet:
    """Feature maps of one split, in dataset order, with the targets."""

    features: torch.Tensor  # (N, C_feat, h, w)
    targets: torch.Tensor  # (N, C)
    flipped: torch.Tensor | None = None
    scaled: torch.Tensor | None = None


def cache_key(backbone: str, image_size: int, dataset: MultiLabelDataset, view: str, scale: int | None) -> str:
    blob = json.dumps([backbone, image_size, [str(p.resolve()) for p in dataset.image_paths], view, scale]).encode()
    return hashlib.sha1(blob).hexdigest()[:16]


def apply_view(images: torch.Tensor, view: str, scale: int | None) -> torch.Tensor:
    if view == "flipped":
        return images.flip(-1)
    if view == "scaled":
        return scale_images(images, scale)
    return images


@torch.no_grad()  # not inference_mode: cached maps later feed autograd as plain inputs
def extract_view(
    backbone: torch.nn.Module,
    dataset: MultiLabelDataset,
    device: torch.device,
    batch_size: int,
    num_workers: int,
    view: str = "image",
    scale: int | None = None,
    autocast: bool = False,
    progress: bool = False,
) -> torch.Tensor:
    """Feature maps of one view ("image", "flipped", "scaled") of every image, in dataset order.

    The dataset's transform must be deterministic (test transform), or the cache is not exact.
    """
    from tqdm import tqdm

    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    chunks = []
    backbone.eval()
    for images, _ in tqdm(loader, desc=f"features ({view})", disable=not progress, leave=False):
        images = apply_view(images.to(device), view, scale).contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            chunks.append(backbone(images).float().cpu())
    return torch.cat(chunks)


def cached_tensor(cache_dir: Path, key: str, compute) -> torch.Tensor:
    """Load ``<cache_dir>/<key>.pt`` or compute and store it (shared by the variants of a group)."""
    path = cache_dir / f"{key}.pt"
    if path.is_file():
        return torch.load(path, map_location="cpu", weights_only=True)
    tensor = compute()
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(tensor, tmp)
    tmp.replace(path)
    return tensor
