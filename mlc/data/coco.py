"""MS-COCO reader: image-level labels from an `instances_*.json` file."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .base import BoxAnnotation, DatasetError, MultiLabelDataset, ObjectBox

__all__ = ["COCODataset"]


def _load_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise DatasetError(f"{path}: annotation file not found")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path}: malformed JSON ({exc})") from exc
    if not isinstance(data, dict) or not isinstance(data.get("images"), list) or not isinstance(
        data.get("categories"), list
    ):
        raise DatasetError(f"{path}: not a COCO instances file (needs 'images' and 'categories' lists)")
    return data


class COCODataset(MultiLabelDataset):
    """COCO image-level labels; classes are category names in ascending category-id order.

    The id order (not file order) is what published COCO label vectors use, so models and label
    graphs stay comparable. Crowd annotations count as present. Images without annotations are
    kept as all-negative rows unless `keep_unannotated=False`.
    """

    def __init__(
        self,
        annotation_file: str | Path,
        image_dir: str | Path,
        transform: Callable[[Image.Image], Any] | None = None,
        keep_unannotated: bool = True,
    ) -> None:
        self.annotation_file = Path(annotation_file)
        self.image_dir = Path(image_dir)
        data = _load_json(self.annotation_file)
        where = self.annotation_file
        try:
            categories = sorted(((int(c["id"]), str(c["name"])) for c in data["categories"]), key=lambda c: c[0])
            images = [(int(im["id"]), str(im["file_name"])) for im in data["images"]]
            annotations = [(int(a["image_id"]), int(a["category_id"])) for a in data.get("annotations", [])]
            bboxes = [[float(v) for v in a["bbox"]] if isinstance(a.get("bbox"), list) and len(a["bbox"]) == 4 else None
                      for a in data.get("annotations", [])]
            sizes = {int(im["id"]): (int(im.get("height") or 0), int(im.get("width") or 0)) for im in data["images"]}
        except (KeyError, TypeError, ValueError) as exc:
            raise DatasetError(f"{where}: malformed COCO entry ({type(exc).__name__}: {exc})") from exc
        if not categories:
            raise DatasetError(f"{where}: no categories")
        cat_index = {cid: k for k, (cid, _) in enumerate(categories)}
        if len(cat_index) != len(categories):
            raise DatasetError(f"{where}: duplicate category ids")
        img_index = {iid: k for k, (iid, _) in enumerate(images)}
        if len(img_index) != len(images):
            raise DatasetError(f"{where}: duplicate image ids")

        labels = np.zeros((len(images), len(categories)), dtype=np.int8)
        boxes: dict[str, list[ObjectBox]] = {}
        for (image_id, category_id), bbox in zip(annotations, bboxes):
            if bbox is not None and category_id in cat_index:  # COCO: [x, y, width, height]
                x, y, w, h = bbox
                boxes.setdefault(str(image_id), []).append(ObjectBox(cat_index[category_id], x, y, x + w, y + h))
        for image_id, category_id in annotations:
            if category_id not in cat_index:
                raise DatasetError(f"{where}: annotation refers to unknown category id {category_id}")
            if image_id not in img_index:
                raise DatasetError(f"{where}: annotation refers to unknown image id {image_id}")
            labels[img_index[image_id], cat_index[category_id]] = 1

        keep = np.ones(len(images), dtype=bool)
        if not keep_unannotated:
            annotated = {image_id for image_id, _ in annotations}
            keep = np.array([iid in annotated for iid, _ in images], dtype=bool)
        kept = [images[k] for k in np.flatnonzero(keep)]
        if not kept:
            raise DatasetError(f"{where}: no images{' with annotations' if not keep_unannotated else ''}")
        paths = [self.image_dir / name for _, name in kept]
        missing = [p for p in paths if not p.is_file()]
        if missing:
            raise DatasetError(f"{missing[0]}: image file not found ({len(missing)} of {len(paths)} missing)")
        self.category_ids: list[int] = [cid for cid, _ in categories]
        self._boxes = boxes
        self._sizes = {str(iid): size for iid, size in sizes.items() if min(size) > 0}
        super().__init__(
            [name for _, name in categories],
            paths,
            labels[keep],
            transform=transform,
            ids=[str(iid) for iid, _ in kept],
        )

    has_boxes = True

    def boxes(self, i: int) -> BoxAnnotation:
        key = self.ids[i]
        return BoxAnnotation(tuple(self._boxes.get(key, ())), self._sizes.get(key))
