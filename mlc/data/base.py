"""Common dataset base: a list of image files plus an (N, C) int8 label matrix.

Every reader (VOC, COCO, CSV) parses its annotations once at construction into this shape, so
training, statistics and the app only ever see `classes`, `image_paths` and `labels`.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

__all__ = ["BoxAnnotation", "DatasetError", "MultiLabelDataset", "ObjectBox", "to_rgb"]


class DatasetError(ValueError):
    """Bad dataset input; the message names the offending file / label and the problem."""


def _scale_to_uint8(image: Image.Image) -> Image.Image:
    """Map a high-bit-depth single-channel image onto 0..255.

    PIL's own `convert("L")` clips 16-bit values at 255, which turns most 16-bit images white.
    """
    data = np.asarray(image, dtype=np.float64)
    if image.mode.startswith("I;16"):
        data = data / 257.0
    elif image.mode == "F" and data.size and np.nanmax(data) <= 1.0:
        data = data * 255.0  # float images in [0, 1]
    elif data.size and np.nanmax(data) > 255.0:
        data = data / 257.0 if np.nanmax(data) <= 65535.0 else data * (255.0 / np.nanmax(data))
    data = np.nan_to_num(data, nan=0.0)
    return Image.fromarray(np.clip(np.rint(data), 0, 255).astype(np.uint8))


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any PIL image to 8-bit RGB.

    High-bit-depth grayscale is rescaled (not clipped); transparent images are composited onto
    white, because the colour of fully transparent pixels is arbitrary (often black).
    """
    if image.mode == "RGB":
        return image
    if image.mode in ("I", "F") or image.mode.startswith("I;16"):
        return _scale_to_uint8(image).convert("RGB")
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    elif image.mode in ("LA", "La", "PA", "RGBa"):
        image = image.convert("RGBA")
    if image.mode == "RGBA":
        background = Image.new("RGB", image.size, (255, 255, 255))
        background.paste(image, mask=image.getchannel("A"))
        return background
    return image.convert("RGB")


@dataclass(frozen=True)
class ObjectBox:
    """One annotated object: its class index and box in pixels, ``[x0, x1) x [y0, y1)`` from the top left."""

    class_index: int
    x0: float
    y0: float
    x1: float
    y1: float


@dataclass(frozen=True)
class BoxAnnotation:
    """The objects of one image, in the coordinates of an image of ``size`` = (height, width) px
    (None: the annotation does not say; the image's own size is meant)."""

    boxes: tuple[ObjectBox, ...]
    size: tuple[int, int] | None = None

    def of_class(self, class_index: int) -> list[ObjectBox]:
        return [b for b in self.boxes if b.class_index == class_index]


class MultiLabelDataset(Dataset):
    """Images with multi-hot labels in {1 present, 0 absent, -1 only difficult objects}.

    All per-row state lives in `image_paths`, `labels` and `ids`, so `subset` and `with_transform`
    can copy any subclass shallowly and the object pickles cleanly into DataLoader workers.
    """

    def __init__(
        self,
        classes: Sequence[str],
        image_paths: Sequence[str | Path],
        labels: np.ndarray,
        transform: Callable[[Image.Image], Any] | None = None,
        ids: Sequence[str] | None = None,
    ) -> None:
        self.classes: list[str] = list(classes)
        self.image_paths: list[Path] = [Path(p) for p in image_paths]
        self.labels: np.ndarray = np.asarray(labels, dtype=np.int8)
        expected = (len(self.image_paths), len(self.classes))
        if self.labels.shape != expected:
            raise DatasetError(f"labels have shape {self.labels.shape}, expected {expected}")
        if not np.isin(self.labels, (-1, 0, 1)).all():
            raise DatasetError("labels must only contain 1, 0 and -1")
        self.ids: list[str] = [str(i) for i in ids] if ids is not None else [p.stem for p in self.image_paths]
        if len(self.ids) != len(self.image_paths):
            raise DatasetError(f"{len(self.ids)} ids for {len(self.image_paths)} images")
        self.transform = transform

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.image_paths)

    def load_image(self, i: int, draft_size: int | None = None) -> Image.Image:
        """Decode image `i` fully as RGB, so a broken file fails here with its path in the message.

        `draft_size` lets a JPEG decode at 1/2, 1/4 or 1/8 scale while both sides stay at least
        `draft_size` (PIL's `Image.draft`); other formats ignore it.
        """
        path = self.image_paths[i]
        try:
            with Image.open(path) as image:
                if draft_size and image.format == "JPEG":
                    image.draft(None, (int(draft_size), int(draft_size)))
                image.load()
                return to_rgb(image)
        except FileNotFoundError as exc:
            raise DatasetError(f"{path}: image file not found") from exc
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
            raise DatasetError(f"{path}: cannot read image ({exc})") from exc

    def __getitem__(self, i: int) -> tuple[Any, torch.Tensor]:
        draft_size = getattr(self.transform, "draft_size", None)  # set by augmenting train transforms
        image = self.load_image(i, draft_size) if draft_size else self.load_image(i)
        if self.transform is not None:
            image = self.transform(image)
        return image, torch.from_numpy(self.labels[i].astype(np.float32))

    has_boxes: bool = False  # readers with object boxes (VOC, COCO) set this and implement `boxes`

    def boxes(self, i: int) -> BoxAnnotation:
        """The object boxes of image `i`, for scoring where the models look (`mlc.localization`)."""
        raise DatasetError(f"{type(self).__name__} has no object boxes (VOC and COCO annotations do)")

    def subset(self, indices: Sequence[int] | np.ndarray) -> MultiLabelDataset:
        """Rows `indices` (ints or a boolean mask), same classes and transform."""
        index = np.asarray(indices)
        if index.dtype == bool:
            index = np.flatnonzero(index)
        index = index.astype(np.int64).reshape(-1)
        out = copy.copy(self)
        out.image_paths = [self.image_paths[k] for k in index]
        out.ids = [self.ids[k] for k in index]
        out.labels = self.labels[index].copy()
        return out

    def with_transform(self, transform: Callable[[Image.Image], Any] | None) -> MultiLabelDataset:
        """Same rows with another transform (e.g. train vs. eval views of one split)."""
        out = copy.copy(self)
        out.transform = transform
        return out

    def __repr__(self) -> str:
        return f"{type(self).__name__}(images={len(self)}, classes={self.num_classes})"
