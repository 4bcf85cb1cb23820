"""Plain CSV format for users' own data: a header `path,labels`, labels separated by `|`."""

from __future__ import annotations

import csv
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .base import DatasetError, MultiLabelDataset

__all__ = ["CSVDataset", "LABEL_SEPARATOR"]

LABEL_SEPARATOR = "|"


def _read_rows(path: Path) -> list[tuple[int, str, list[str]]]:
    """(line number, path, labels) per data row; an empty label field means no labels."""
    if not path.is_file():
        raise DatasetError(f"{path}: CSV file not found")
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            fields = [name.strip() for name in reader.fieldnames or []]
            if "path" not in fields or "labels" not in fields:
                raise DatasetError(f"{path}: header must contain 'path' and 'labels', got {fields}")
            reader.fieldnames = fields
            rows = []
            for row in reader:
                image = (row["path"] or "").strip()
                if not image:
                    raise DatasetError(f"{path}, line {reader.line_num}: empty image path")
                labels = [s.strip() for s in (row["labels"] or "").split(LABEL_SEPARATOR)]
                rows.append((reader.line_num, image, [s for s in labels if s]))
    except (csv.Error, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path}: malformed CSV ({exc})") from exc
    if not rows:
        raise DatasetError(f"{path}: no data rows")
    return rows


class CSVDataset(MultiLabelDataset):
    """Rows of `path,labels`; relative paths resolve against `image_root` (default: the CSV's folder).

    With `classes` given, the class order is fixed by the caller (e.g. to match a trained model)
    and an unknown label is an error rather than a silently new class.
    """

    def __init__(
        self,
        csv_file: str | Path,
        image_root: str | Path | None = None,
        classes: Sequence[str] | None = None,
        transform: Callable[[Image.Image], Any] | None = None,
    ) -> None:
        self.csv_file = Path(csv_file)
        self.image_root = Path(image_root) if image_root is not None else self.csv_file.parent
        rows = _read_rows(self.csv_file)
        if classes is None:
            classes = sorted({label for _, _, labels in rows for label in labels})
            if not classes:
                raise DatasetError(f"{self.csv_file}: no labels in any row, so no classes to infer")
        classes = list(classes)
        if len(set(classes)) != len(classes):
            raise DatasetError(f"{self.csv_file}: duplicate class names in {classes}")
        class_index = {name: k for k, name in enumerate(classes)}
        labels = np.zeros((len(rows), len(classes)), dtype=np.int8)
        for r, (line, _, names) in enumerate(rows):
            for name in names:
                if name not in class_index:
                    raise DatasetError(f"{self.csv_file}, line {line}: unknown label {name!r}")
                labels[r, class_index[name]] = 1
        paths = [self.image_root / image for _, image, _ in rows]  # an absolute `image` wins
        missing = [(line, p) for (line, _, _), p in zip(rows, paths) if not p.is_file()]
        if missing:
            line, p = missing[0]
            raise DatasetError(
                f"{self.csv_file}, line {line}: image file not found: {p} ({len(missing)} of {len(paths)} missing)"
            )
        super().__init__(classes, paths, labels, transform=transform, ids=[image for _, image, _ in rows])
