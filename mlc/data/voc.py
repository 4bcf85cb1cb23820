"""PASCAL VOC reader: `ImageSets/Main/<split>.txt` lists, one `Annotations/<id>.xml` per image."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .base import BoxAnnotation, DatasetError, MultiLabelDataset, ObjectBox

__all__ = ["VOC_CLASSES", "VOCDataset", "resolve_voc_root"]
# the usual grouping of VOC's classes, for colouring plots (any other class is "other")
VOC_CLASS_GROUPS: dict[str, tuple[str, ...]] = {
    "vehicles": ("aeroplane", "bicycle", "boat", "bus", "car", "motorbike", "train"),
    "animals": ("bird", "cat", "cow", "dog", "horse", "sheep"),
    "indoor objects": ("bottle", "chair", "diningtable", "pottedplant", "sofa", "tvmonitor"),
    "person": ("person",),
}

VOC_CLASSES: list[str] = [
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
    "tvmonitor",
]  # fmt: skip


def resolve_voc_root(root: str | Path, year: str = "2007") -> Path:
    """Find the `VOC<year>` folder whether `root` is it, its parent, or the `VOCdevkit` parent."""
    root = Path(root)
    for candidate in (root / f"VOC{year}", root / "VOCdevkit" / f"VOC{year}", root):
        if (candidate / "ImageSets" / "Main").is_dir() and (candidate / "Annotations").is_dir():
            return candidate
    raise DatasetError(
        f"{root}: no VOC{year} tree found (looked for VOC{year}/, VOCdevkit/VOC{year}/ and the "
        "folder itself, each with ImageSets/Main and Annotations)"
    )


def read_split(path: Path) -> list[str]:
    """Image ids listed in a split file, one per line (extra columns ignored)."""
    if not path.is_file():
        raise DatasetError(f"{path}: split file not found")
    ids = [line.split()[0] for line in path.read_text().splitlines() if line.strip()]
    if not ids:
        raise DatasetError(f"{path}: split file is empty")
    return ids


def parse_boxes(path: Path, class_index: dict[str, int]) -> BoxAnnotation:
    """Every object's box (difficult ones too). VOC's 1-based inclusive pixel corners become
    ``[xmin - 1, xmax)``, so a box covering the whole image is [0, width)."""
    root = _annotation_root(path)
    boxes = []
    for obj in root.iter("object"):
        name, box = (obj.findtext("name") or "").strip(), obj.find("bndbox")
        if name not in class_index or box is None:
            continue
        try:
            xmin, ymin, xmax, ymax = (float(box.findtext(k) or "nan") for k in ("xmin", "ymin", "xmax", "ymax"))
        except ValueError as exc:
            raise DatasetError(f"{path}: bad <bndbox> for {name!r} ({exc})") from exc
        boxes.append(ObjectBox(class_index[name], xmin - 1, ymin - 1, xmax, ymax))
    size = None
    try:
        width, height = int(root.findtext("size/width") or 0), int(root.findtext("size/height") or 0)
        size = (height, width) if width > 0 and height > 0 else None
    except ValueError:
        pass
    return BoxAnnotation(tuple(boxes), size)


def _annotation_root(path: Path) -> ET.Element:
    if not path.is_file():
        raise DatasetError(f"{path}: annotation file not found")
    try:
        return ET.parse(path).getroot()
    except ET.ParseError as exc:
        raise DatasetError(f"{path}: malformed XML ({exc})") from exc


def parse_annotation(path: Path, class_index: dict[str, int]) -> np.ndarray:
    """Label row for one XML: 1 if a non-difficult object of the class, -1 if only difficult ones."""
    row = np.zeros(len(class_index), dtype=np.int8)
    for obj in _annotation_root(path).iter("object"):
        name = (obj.findtext("name") or "").strip()
        if name not in class_index:
            raise DatasetError(f"{path}: unknown class {name!r} (expected one of the VOC classes)")
        difficult_text = (obj.findtext("difficult") or "0").strip()
        try:
            difficult = int(difficult_text) != 0
        except ValueError as exc:
            raise DatasetError(f"{path}: bad <difficult> value {difficult_text!r} for {name!r}") from exc
        k = class_index[name]
        if not difficult:
            row[k] = 1
        elif row[k] == 0:
            row[k] = -1
    return row


class VOCDataset(MultiLabelDataset):
    """VOC 2007 / 2012 classification labels derived from the detection annotations.

    Images without objects stay as all-zero rows: dropping them would silently change the split.
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        year: str = "2007",
        transform: Callable[[Image.Image], Any] | None = None,
        download: bool = False,
    ) -> None:
        year = str(year)
        if download:
            from torchvision.datasets import VOCDetection

            VOCDetection(str(root), year=year, image_set=split, download=True)
        self.root = resolve_voc_root(root, year)
        self.split = split
        self.year = year
        ids = read_split(self.root / "ImageSets" / "Main" / f"{split}.txt")
        class_index = {name: k for k, name in enumerate(VOC_CLASSES)}
        labels = np.stack([parse_annotation(self.root / "Annotations" / f"{i}.xml", class_index) for i in ids])
        paths = [self.root / "JPEGImages" / f"{i}.jpg" for i in ids]
        missing = [p for p in paths if not p.is_file()]
        if missing:
            raise DatasetError(f"{missing[0]}: image file not found ({len(missing)} of {len(paths)} missing)")
        super().__init__(VOC_CLASSES, paths, labels, transform=transform, ids=ids)

    has_boxes = True

    def boxes(self, i: int) -> BoxAnnotation:
        return parse_boxes(self.root / "Annotations" / f"{self.ids[i]}.xml", {n: k for k, n in enumerate(self.classes)})
