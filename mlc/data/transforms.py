"""Image transforms: PIL image -> normalized float32 tensor (3, S, S).

Training augmentation follows docs/methods.md ("Training"): flip, rotation, brightness / contrast /
gamma and no crops, because a crop can cut away the only instance of a label and make the target wrong.
Everything is a module-level class (no lambdas) so the transforms pickle into DataLoader workers.

Cost: the image is resized to S x S on uint8 first (the same antialiased resize as the test
transform), then every per-pixel step runs once on the small image:

- brightness, contrast and gamma are per-value functions of the uint8 input (contrast's grey mean
  comes exactly from the per-channel histograms), so together with scaling to [0, 1] and
  normalization they collapse into one 256-entry table per channel, applied with one lookup that
  writes the normalized float32 output;
- flip and rotation are one affine warp of that output with the border set to 0, which is the
  mean colour after normalization.

The test transform is the plain antialiased resize + normalize; its lookup table is computed with
the same float32 operations as `ToDtype(scale=True)` + `Normalize`, so its output is bit-identical
to the earlier `Resize -> ToDtype -> Normalize` pipeline.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image
from .base import to_rgb

# torchvision is imported where it is used (gamma only): the test transform needs plain torch, so
# serving (the app) starts without torchvision, torch._dynamo and sympy (about 3 s and 160 MiB).

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "EnsureRGB",
    "FusedAugment",
    "NormalizeLUT",
    "RandomGamma",
    "ResizeUint8",
    "build_transforms",
]

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

GREY_WEIGHTS = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale, used by adjust_contrast
GREY_WEIGHTS_NP = np.asarray(GREY_WEIGHTS, dtype=np.float64)

_CV2_PID: int | None = None


def _cv2():
    """OpenCV, single-threaded in this process.

    The transforms run per image inside DataLoader workers, where the parallelism comes from the
    workers; OpenCV's own thread pool would oversubscribe the cores and does not survive fork.
    """
    global _CV2_PID
    import cv2

    if _CV2_PID != os.getpid():
        cv2.setNumThreads(1)
        _CV2_PID = os.getpid()
    return cv2


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
    Uses torch's RNG so DataLoader worker seeding applies. (The training pipeline folds gamma
    into `FusedAugment`'s lookup table; this stand-alone version works on float tensors.)
    """

    gamma_range: tuple[float, float] = (0.8, 1.25)

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        from torchvision.transforms.v2 import functional as F

        return F.adjust_gamma(image, sample_gamma(self.gamma_range))


def sample_gamma(gamma_range: tuple[float, float]) -> float:
    low, high = (math.log(g) for g in gamma_range)
    return math.exp(low + (high - low) * torch.rand(()).item())


@dataclass(frozen=True)
class ResizeUint8:
    """RGB PIL image -> (3, size, size) uint8 tensor: `PILToTensor` + antialiased bilinear `Resize`.

    The same functional calls as those two v2 transforms (so the same pixels), without their
    per-call input inspection.
    """

    size: int

    def __call__(self, image: Image.Image) -> torch.Tensor:
        # what torchvision's PILToTensor + Resize(antialias=True) compute on uint8 (identical pixels)
        pixels = torch.from_numpy(np.array(image, dtype=np.uint8, copy=True)).permute(2, 0, 1)
        return torch.nn.functional.interpolate(pixels[None], size=(self.size, self.size), mode="bilinear",
                                               align_corners=False, antialias=True)[0]


def _unit_values() -> torch.Tensor:
    """(3, 256) float32: the values 0..255 scaled to [0, 1] exactly as `ToDtype(scale=True)` does."""
    levels = torch.arange(256, dtype=torch.uint8).expand(3, 1, 256)
    return levels.to(torch.float32).mul_(1.0 / 255).reshape(3, 256)  # torchvision's to_dtype(scale=True)


def _normalized_table(values: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """(3, 256) float32 values in [0, 1] -> normalized (256, 1, 3) table for `cv2.LUT` on HWC uint8."""
    mean_t = torch.as_tensor(list(mean), dtype=torch.float32).view(-1, 1, 1)
    std_t = torch.as_tensor(list(std), dtype=torch.float32).view(-1, 1, 1)
    normalized = values.reshape(3, 1, 256).sub(mean_t).div_(std_t)  # torchvision's normalize
    return np.ascontiguousarray(normalized.reshape(3, 256).T.numpy().reshape(256, 1, 3))


def _hwc_uint8(image: torch.Tensor) -> np.ndarray:
    """(3, H, W) uint8 tensor -> contiguous (H, W, 3) array (a view for `PILToTensor` output)."""
    if image.dtype != torch.uint8 or image.ndim != 3 or image.shape[0] != 3:
        raise TypeError(f"expected a (3, H, W) uint8 tensor, got {tuple(image.shape)} {image.dtype}")
    return image.permute(1, 2, 0).contiguous().numpy()


def _chw(hwc: np.ndarray) -> torch.Tensor:
    """(H, W, 3) float32 -> contiguous (3, H, W) tensor.

    Contiguous on purpose: DataLoader's collate stacks channels-last (3, H, W) views about 5x
    slower than this one transposing copy per image (measured: ~1 ms vs ~0.06 ms per 224 px image).
    """
    return torch.from_numpy(np.ascontiguousarray(hwc.transpose(2, 0, 1)))


@dataclass
class NormalizeLUT:
    """(3, H, W) uint8 -> normalized float32 with one table lookup (scale to [0, 1] and normalize).

    Bit-identical to `ToDtype(float32, scale=True)` followed by `Normalize(mean, std)`.
    """

    mean: tuple[float, ...]
    std: tuple[float, ...]
    table: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.mean = tuple(float(m) for m in self.mean)
        self.std = tuple(float(s) for s in self.std)
        self.table = _normalized_table(_unit_values(), self.mean, self.std)

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        return _chw(_cv2().LUT(_hwc_uint8(image), self.table))


@dataclass
class FusedAugment:
    """Random flip, rotation and brightness / contrast / gamma, then normalize; (3, S, S) uint8 in.

    Same distributions as torchvision's `RandomHorizontalFlip(hflip)`, `RandomRotation(rotation)`,
    `ColorJitter(brightness, contrast)` (factors uniform in [1 - x, 1 + x], the two applied in random
    order, contrast blending with the mean grey level) and `RandomGamma(gamma)`. All draws use
    torch's RNG, so DataLoader worker seeding applies. Pixels rotated in from outside the image are
    the mean colour (0 after normalization), whatever the colour jitter.
    """

    mean: tuple[float, ...]
    std: tuple[float, ...]
    rotation: float = 45.0
    brightness: float = 0.2
    contrast: float = 0.2
    gamma: tuple[float, float] | None = (0.8, 1.25)
    hflip: float = 0.5
    unit_np: np.ndarray = field(init=False, repr=False)
    mean_np: np.ndarray = field(init=False, repr=False)
    std_np: np.ndarray = field(init=False, repr=False)
    identity: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.mean = tuple(float(m) for m in self.mean)
        self.std = tuple(float(s) for s in self.std)
        self.rotation = max(float(self.rotation or 0.0), 0.0)
        self.brightness = max(float(self.brightness or 0.0), 0.0)
        self.contrast = max(float(self.contrast or 0.0), 0.0)
        if self.gamma is not None:
            low, high = float(self.gamma[0]), float(self.gamma[1])
            if not 0 < low <= high:
                raise ValueError(f"gamma range must satisfy 0 < low <= high, got {self.gamma}")
            self.gamma = None if low == high else (low, high)  # a fixed gamma is left out, as before
        self.hflip = float(self.hflip or 0.0)
        unit = _unit_values()
        self.unit_np = unit.numpy().copy()
        self.mean_np = np.asarray(self.mean, dtype=np.float32).reshape(3, 1)
        self.std_np = np.asarray(self.std, dtype=np.float32).reshape(3, 1)
        self.identity = _normalized_table(unit, self.mean, self.std)

    @property
    def jitters_colour(self) -> bool:
        return self.brightness > 0 or self.contrast > 0 or self.gamma is not None

    def sample(self) -> dict[str, object]:
        """Draw this image's parameters (in a fixed order, so a seeded RNG reproduces them)."""
        params: dict[str, object] = {"flip": False, "angle": 0.0, "ops": []}
        if self.hflip > 0:
            params["flip"] = bool(torch.rand(()) < self.hflip)
        if self.rotation > 0:
            params["angle"] = float(torch.empty(()).uniform_(-self.rotation, self.rotation))
        ops: list[tuple[str, float]] = []
        for name, amount in (("brightness", self.brightness), ("contrast", self.contrast)):
            if amount > 0:  # ColorJitter's factor range
                ops.append((name, float(torch.empty(()).uniform_(max(0.0, 1 - amount), 1 + amount))))
        if len(ops) == 2:
            ops = [ops[int(k)] for k in torch.randperm(2)]
        if self.gamma is not None:
            ops.append(("gamma", sample_gamma(self.gamma)))
        params["ops"] = ops
        return params

    def colour_table(self, hwc: np.ndarray, ops: Sequence[tuple[str, float]]) -> np.ndarray:
        """The (256, 1, 3) table: value -> jittered, normalized value, per channel.

        The same float32 arithmetic as torchvision's adjust_brightness / adjust_contrast /
        adjust_gamma on a [0, 1] image (to within float rounding), computed on 3 x 256 values.
        """
        if not ops:
            return self.identity
        values = self.unit_np
        probs = None
        for name, factor in ops:
            if name == "brightness":
                values = np.clip(values * np.float32(factor), 0, 1)
            elif name == "contrast":
                if probs is None:  # per-channel value frequencies give the exact grey mean
                    cv2 = _cv2()
                    counts = np.stack([cv2.calcHist([hwc], [c], None, [256], [0, 256]).reshape(-1) for c in range(3)])
                    probs = counts.astype(np.float64) / max(hwc.shape[0] * hwc.shape[1], 1)
                grey = float(GREY_WEIGHTS_NP @ (probs * values).sum(axis=1))
                values = np.clip(values * np.float32(factor) + np.float32(grey * (1.0 - factor)), 0, 1)
            else:  # gamma; values stay in [0, 1]
                values = np.power(values, np.float32(factor))
        table = (values - self.mean_np) / self.std_np
        return np.ascontiguousarray(table.T.reshape(256, 1, 3), dtype=np.float32)

    def warp_matrix(self, height: int, width: int, flip: bool, angle: float) -> np.ndarray:
        """2 x 3 forward map (source pixel -> output pixel): flip, then rotate about the centre.

        Positive angles turn the image counter-clockwise on screen, like `RandomRotation`.
        """
        cx, cy = (width - 1) / 2, (height - 1) / 2
        cos, sin = math.cos(math.radians(angle)), math.sin(math.radians(angle))
        rotate = np.array([[cos, sin, (1 - cos) * cx - sin * cy], [-sin, cos, sin * cx + (1 - cos) * cy], [0, 0, 1]])
        mirror = np.array([[-1.0, 0, width - 1], [0, 1, 0], [0, 0, 1]]) if flip else np.eye(3)
        return (rotate @ mirror)[:2]

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        cv2 = _cv2()
        params = self.sample()
        hwc = _hwc_uint8(image)
        table = self.colour_table(hwc, params["ops"])  # type: ignore[arg-type]
        if params["flip"] and self.rotation == 0:
            hwc = cv2.flip(hwc, 1)
        out = cv2.LUT(hwc, table)
        if self.rotation > 0:
            height, width = out.shape[:2]
            matrix = self.warp_matrix(height, width, bool(params["flip"]), float(params["angle"]))  # type: ignore
            out = cv2.warpAffine(out, matrix, (width, height), flags=cv2.INTER_LINEAR,
                                 borderMode=cv2.BORDER_CONSTANT, borderValue=(0.0, 0.0, 0.0, 0.0))
        return _chw(out)


class Compose:
    """Apply steps in order (torchvision's ``Compose`` without importing torchvision)."""

    def __init__(self, transforms: list[object]):
        self.transforms = list(transforms)

    def __call__(self, image):
        for step in self.transforms:
            image = step(image)
        return image

    def __repr__(self) -> str:
        return "Compose(" + ", ".join(repr(t) for t in self.transforms) + ")"


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
) -> Compose:
    """Resize to (image_size, image_size), augment if `train`, scale to [0, 1] and normalize.

    A zero / None augmentation parameter leaves that step out. Rotation fills the corners with
    the mean colour, which is zero after normalization.

    An augmenting train transform carries `draft_size = image_size`: datasets then let the JPEG
    decoder shrink images at least twice that size by a power of two while decoding (PIL's
    `Image.draft`), before the same antialiased resize. The test transform never does.
    """
    steps: list[object] = [EnsureRGB(), ResizeUint8(int(image_size))]
    augment = None
    if train:
        augment = FusedAugment(tuple(mean), tuple(std), rotation=rotation, brightness=brightness, contrast=contrast,
                               gamma=gamma, hflip=hflip)
        if augment.rotation == 0 and augment.hflip <= 0 and not augment.jitters_colour:
            augment = None
    steps.append(augment if augment is not None else NormalizeLUT(tuple(mean), tuple(std)))
    transform = Compose(steps)
    if augment is not None:
        transform.draft_size = int(image_size)
    return transform
