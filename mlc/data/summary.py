"""Per-class image counts per split, as a Markdown table.

    python -m mlc.data.summary <root> [--kind voc2007|voc2012|coco2014|coco2017|csv] [--splits train val]

The kind is inferred from ``root`` (a VOC tree, a COCO root, a CSV file or a folder of ``<split>.csv``);
``--kind`` overrides it. Without ``--splits``: train and val where both exist, the one that exists
otherwise; a single CSV file is one column. Counts are images (not objects): the unit a multi-label
classifier sees.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from .base import DatasetError, MultiLabelDataset
from .factory import DATASET_KINDS, build_dataset, infer_kind

__all__ = ["summarize", "main"]


def summarize(datasets: Mapping[str, MultiLabelDataset]) -> str:
    """Markdown table: positive images per class and split, a difficult-only column per split if
    any split has -1 labels, then totals and the number of images without any label."""
    splits = list(datasets)
    if not splits:
        raise ValueError("no splits to summarize")
    classes = datasets[splits[0]].classes
    for split in splits[1:]:
        if datasets[split].classes != classes:
            raise DatasetError(f"split {split!r} has different classes from split {splits[0]!r}")
    labels = {s: datasets[s].labels for s in splits}
    show_difficult = any((y == -1).any() for y in labels.values())

    header = ["class"] + splits + ([f"{s} (difficult only)" for s in splits] if show_difficult else [])

    def row(name: str, per_split: Sequence[object], difficult: Sequence[int] | None = None) -> str:
        cells = [name] + [str(v) for v in per_split]
        if show_difficult:
            cells += [str(v) for v in difficult] if difficult is not None else [""] * len(splits)
        return "| " + " | ".join(cells) + " |"

    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    for k, name in enumerate(classes):
        lines.append(row(name, [int((labels[s][:, k] == 1).sum()) for s in splits],
                         [int((labels[s][:, k] == -1).sum()) for s in splits]))  # fmt: skip
    lines.append(row("**positive labels**", [int((labels[s] == 1).sum()) for s in splits],
                     [int((labels[s] == -1).sum()) for s in splits]))  # fmt: skip
    lines.append(row("**images**", [len(datasets[s]) for s in splits]))
    lines.append(row("**images without any label**", [int((~labels[s].any(axis=1)).sum()) for s in splits]))
    lines.append(row("**positive labels per image**", [f"{(labels[s] == 1).sum(axis=1).mean():.2f}" for s in splits]))
    return "\n".join(lines)


def split_exists(kind: str, root: str | Path, split: str) -> bool:
    """Whether ``root`` has a ``split`` of ``kind`` at all (its list, annotation file or CSV)."""
    from .factory import coco_paths
    from .voc import resolve_voc_root

    try:
        if kind.startswith("voc"):
            return (resolve_voc_root(root, kind[3:]) / "ImageSets" / "Main" / f"{split}.txt").is_file()
        if kind.startswith("coco"):
            return coco_paths(root, split, kind[4:])[0].is_file()
        return (Path(root) / f"{split}.csv").is_file()
    except DatasetError:
        return False


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mlc.data.summary", description=__doc__.splitlines()[0])
    parser.add_argument("root", help="dataset root (VOC tree, COCO root, or CSV file / folder)")
    parser.add_argument("--kind", choices=DATASET_KINDS, help="override the inferred kind")
    parser.add_argument("--splits", nargs="+", help="default: train and val, those that exist")
    args = parser.parse_args(argv)
    try:
        kind = args.kind or infer_kind(args.root)
        if kind == "csv" and Path(args.root).is_file():  # one file: its rows, whatever the split names
            datasets = {Path(args.root).name: build_dataset(kind, args.root, "train")}
        else:
            splits = args.splits or [s for s in ("train", "val") if split_exists(kind, args.root, s)] or ["train"]
            datasets = {split: build_dataset(kind, args.root, split) for split in splits}
    except DatasetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(summarize(datasets))
    return 0


if __name__ == "__main__":
    sys.exit(main())
