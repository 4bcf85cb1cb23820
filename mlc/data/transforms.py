"""Image transforms: PIL image -> normalized float32 tensor (3, S, S).

Training augmentation follows the methods page: flip, rotation, brightness / contrast / gamma and
no crops, because a crop can cut away the only instance of a label and make the target wrong.
Everything is a module-level class (no lambdas) so the transforms pickle into DataLoader workers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from PIL import Image
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from .base import to_rgb

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "EnsureRGB", "RandomGamma", "build_transforms"]

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


class EnsureRGB:
    """Convert PIL images of any mode to RGB, so the output always has 3 channels."""

    def __call__(self, image: Image.Image) -> Image.Image:
        return to_rgb(image)

    def __repr__(self) -> str:
        return "EnsureRGB()"


@dataclass(frozen=True)
class RandomGamma:
    """Gamma correction with gamma drawn log-uniformly from `gamma_range` (float images in [0, 1]).

    Log-uniform makes (0.8, 1.25) symmetric: brightening and darkening are equally likely.
    Uses torch's RNG so DataLoader worker seeding applies.
    """

    gamma_range: tuple[float, float] = (0.8, 1.25)

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        low, high = (math.log(g) for g in self.gamma_range)
        gamma = math.exp(low + (high - low) * torch.rand(()).item())
        return F.adjust_gamma(image, gamma)


def build_transforms(
    image_size: int,
    train: bool,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    rotation: float = 45.0,
    brightness: float = 0.2,
    contrast: float = 0.2,
    gamma: tuple[float, float] | None = (0.8, 1.25),
    hflip: float = 0.5,
) -> v2.Compose:
    """Resize to (image_size, image_size), augment if `train`, scale to [0, 1] and normalize.

    A zero / None augmentation parameter leaves that step out. Rotation fills the corners with
    the mean colour, which is zero after normalization.
    """
    steps: list[object] = [
        EnsureRGB(),
        v2.PILToTensor(),
        v2.Resize((image_size, image_size), antialias=True),
    ]
    if train and hflip > 0:
        steps.append(v2.RandomHorizontalFlip(p=hflip))
    steps.append(v2.ToDtype(torch.float32, scale=True))
    if train:
        if rotation > 0:
            steps.append(
                v2.RandomRotation(rotation, interpolation=v2.InterpolationMode.BILINEAR, fill=[float(m) for m in mean])
            )
        if brightness > 0 or contrast > 0:
            steps.append(v2.ColorJitter(brightness=brightness, contrast=contrast))
        if gamma is not None and gamma[0] != gamma[1]:
            steps.append(RandomGamma((float(gamma[0]), float(gamma[1]))))
    steps.append(v2.Normalize(mean=list(mean), std=list(std)))
    return v2.Compose(steps)
