"""Build a dataset from a config-style (kind, root, split) triple."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .base import DatasetError, MultiLabelDataset
from .coco import COCODataset
from .csv_dataset import CSVDataset
from .voc import VOCDataset

__all__ = ["DATASET_KINDS", "build_dataset", "coco_paths", "infer_kind"]

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


def infer_kind(root: str | Path) -> str:
    """The dataset kind of ``root`` from what is on disk: a ``.csv`` file (or a folder of
    ``<split>.csv``) is csv, a VOC tree (``VOC<year>/``, ``VOCdevkit/VOC<year>/`` or the folder itself
    with ``ImageSets/Main`` and ``Annotations``) voc<year>, ``annotations/instances_<split><year>.json``
    coco<year>. ``DatasetError`` naming what was looked for when none fits."""
    root = Path(root)
    if root.is_file():
        if root.suffix.lower() == ".csv":
            return "csv"
        raise DatasetError(f"{root}: a file, but not a .csv one; a dataset root is a VOC tree, a COCO root or a CSV file")
    if not root.is_dir():
        raise DatasetError(f"{root}: no such file or folder")

    def is_voc(folder: Path) -> bool:
        return (folder / "ImageSets" / "Main").is_dir() and (folder / "Annotations").is_dir()

    for year in ("2007", "2012"):
        if is_voc(root / f"VOC{year}") or is_voc(root / "VOCdevkit" / f"VOC{year}"):
            return f"voc{year}"
    if is_voc(root):
        return "voc2012" if "2012" in root.name else "voc2007"
    for year in ("2014", "2017"):
        if any((root / "annotations").glob(f"instances_*{year}.json")):
            return f"coco{year}"
    if any(root.glob("*.csv")):
        return "csv"
    raise DatasetError(f"{root}: cannot tell the dataset kind (no VOC tree with ImageSets/Main and Annotations, no "
                       f"COCO annotations/instances_<split><year>.json, no .csv file); give --kind, one of "
                       f"{', '.join(DATASET_KINDS)}")
