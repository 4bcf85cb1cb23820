"""Build a dataset from a config-style (kind, root, split) triple."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .base import DatasetError, MultiLabelDataset
from .coco import COCODataset
from .csv_dataset import CSVDataset
from .voc import VOCDataset

__all__ = ["DATASET_KINDS", "build_dataset", "coco_paths"]

DATASET_KINDS: tuple[str, ...] = ("voc2007", "voc2012", "coco2014", "coco2017", "csv")


def coco_paths(root: str | Path, split: str, year: str) -> tuple[Path, Path]:
    """(annotation file, image folder) in the standard COCO layout under `root`."""
    root = Path(root)
    return root / "annotations" / f"instances_{split}{year}.json", root / f"{split}{year}"


def build_dataset(kind: str, root: str | Path, split: str, **kw: Any) -> MultiLabelDataset:
    """`kw` goes to the reader (e.g. `transform`, `keep_unannotated`, `classes`).

    csv: `root` is the CSV file itself, or a folder holding `<split>.csv`.
    """
    kind = kind.lower()
    if kind in ("voc2007", "voc2012"):
        return VOCDataset(root, split=split, year=kind[3:], **kw)
    if kind in ("coco2014", "coco2017"):
        annotation_file, image_dir = coco_paths(root, split, kind[4:])
        return COCODataset(annotation_file, image_dir, **kw)
    if kind == "csv":
        path = Path(root)
        return CSVDataset(path if path.suffix.lower() == ".csv" else path / f"{split}.csv", **kw)
    raise DatasetError(f"unknown dataset kind {kind!r}; expected one of {', '.join(DATASET_KINDS)}")
