"""Per-class image counts per split, as a Markdown table.

    python -m mlc.data.summary <root> [--kind voc2007] [--splits train val]

Counts are images (not objects): the unit a multi-label classifier sees.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence

from .base import DatasetError, MultiLabelDataset
from .factory import DATASET_KINDS, build_dataset

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


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mlc.data.summary", description=__doc__.splitlines()[0])
    parser.add_argument("root", help="dataset root (VOC tree, COCO root, or CSV file / folder)")
    parser.add_argument("--kind", default="voc2007", choices=DATASET_KINDS)
    parser.add_argument("--splits", nargs="+", default=["train", "val"])
    args = parser.parse_args(argv)
    try:
        datasets = {split: build_dataset(args.kind, args.root, split) for split in args.splits}
    except DatasetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(summarize(datasets))
    return 0


if __name__ == "__main__":
    sys.exit(main())
