"""Splits for a run: the training split, a seeded selection split carved from it, and the eval split.

When the evaluation split would be the training data itself (a single CSV file given as the root,
or the same split named twice), a seeded evaluation part is carved out of it instead, so no image
is both trained on and reported; ``split.json`` records which images went where.
"""
from __future__ import annotations

import json
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from mlc.data import DatasetError, MultiLabelDataset, build_dataset


SMALL_SELECTION = 20  # fewer selection images than this: model selection is mostly noise


@dataclass
class RunSplits:
    train: MultiLabelDataset  # the whole training split; feature caches are keyed on it
    fit: MultiLabelDataset  # trains the weights; label statistics come from it alone
    selection: MultiLabelDataset  # chooses the epoch (model selection)
    evaluation: MultiLabelDataset  # reported only
    fit_indices: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))  # rows of `train`
    selection_indices: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))


@dataclass
class SplitInfo:
    train: int
    selection: int
    eval: int
    selection_fraction: float
    seed: int
    train_split: str
    eval_split: str
    selection_ids: list[str]
    eval_carved: bool = False  # the eval images were carved (seeded) out of the training data
    eval_ids: list[str] | None = None  # recorded when carved
    limit: int | None = None  # --limit: each split was a seeded sample of this many images
    limit_ids: dict[str, list[str]] | None = None  # split name -> the ids kept, recorded when limited

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=1))

    def summary(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k not in ("selection_ids", "eval_ids", "limit_ids")}


def carve_selection(num_items: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded split of range(num_items) into (fit, selection) indices, both sorted."""
    order = np.random.default_rng(seed).permutation(num_items)
    n_sel = max(1, int(round(num_items * fraction)))
    if n_sel >= num_items:
        raise ValueError(f"cannot carve {n_sel} selection images out of {num_items} training images")
    return np.sort(order[n_sel:]), np.sort(order[:n_sel])


def _same_images(a: MultiLabelDataset, b: MultiLabelDataset) -> bool:
    return len(a) == len(b) and [str(p) for p in a.image_paths] == [str(p) for p in b.image_paths]


def limit_dataset(dataset: MultiLabelDataset, limit: int | None, seed: int) -> MultiLabelDataset:
    """A seeded sample of ``limit`` images (in the dataset's order), for a quick try on a large
    dataset; the whole dataset when it has no more than ``limit``. The same data and seed give the
    same sample, so a split named twice stays one split."""
    if limit is None or len(dataset) <= limit:
        return dataset
    keep = np.sort(np.random.default_rng(seed + 104_729).permutation(len(dataset))[:limit])
    return dataset.subset(keep)


def build_splits(
    dataset: str, root: str, train_split: str, eval_split: str, fraction: float, seed: int, eval_fraction: float = 0.2,
    limit: int | None = None,
) -> tuple[RunSplits, SplitInfo]:
    train = limit_dataset(build_dataset(dataset, root, train_split), limit, seed)
    evaluation = limit_dataset(build_dataset(dataset, root, eval_split), limit, seed)
    if limit is not None:
        print(f"note: --limit {limit}: {len(train)} images of {train_split!r} and {len(evaluation)} of {eval_split!r} "
              f"(a seeded sample; split.json lists them)", file=sys.stderr)
    limit_ids = {train_split: list(train.ids), eval_split: list(evaluation.ids)} if limit is not None else None
    if evaluation.classes != train.classes:
        raise ValueError(f"splits {train_split!r} and {eval_split!r} of {root} have different class lists")
    eval_ids = None
    carved = _same_images(train, evaluation)
    if carved:
        # e.g. a single CSV file as root: evaluating on it would report accuracy on training images
        rest, held = carve_selection(len(train), eval_fraction, seed + 7_919)
        evaluation = train.subset(held)
        eval_ids = list(evaluation.ids)
        train = train.subset(rest)
        print(f"note: {root} gives the same images for {train_split!r} and {eval_split!r}; {len(held)} of them "
              f"({eval_fraction:.0%}, seeded) are held out for evaluation and never trained on (split.json lists them)",
              file=sys.stderr)
    fit_idx, sel_idx = carve_selection(len(train), fraction, seed)
    if len(sel_idx) < SMALL_SELECTION:
        print(f"note: the selection split has {len(sel_idx)} image(s): its mAP hardly tells epochs apart (on a "
              f"handful of images it is 1.0 every epoch, and the first epoch is kept); expect the selected model, "
              f"and the model stage 2 starts from, to be an early one (README, Train: 'A quick try')", file=sys.stderr)
    splits = RunSplits(train=train, fit=train.subset(fit_idx), selection=train.subset(sel_idx), evaluation=evaluation,
                       fit_indices=fit_idx, selection_indices=sel_idx)
    info = SplitInfo(
        train=len(fit_idx), selection=len(sel_idx), eval=len(evaluation), selection_fraction=fraction, seed=seed,
        train_split=train_split, eval_split=eval_split, selection_ids=[train.ids[i] for i in sel_idx],
        eval_carved=carved, eval_ids=eval_ids, limit=limit, limit_ids=limit_ids,
    )
    return splits, info


def _decode_error(path: Path) -> str | None:
    try:
        with Image.open(path) as image:
            image.draft("RGB", (64, 64))  # JPEG: decode at reduced scale; still reads every byte
            image.load()
    except Exception as err:  # PIL raises many types for broken files
        return f"{path} ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else 'unreadable'})"
    return None


def verify_images(datasets: list[MultiLabelDataset], threads: int = 8, progress: bool = False) -> int:
    """Decode every image once before training, so a broken file stops the run at the start with
    its path, not in a DataLoader worker mid-epoch. Returns the number of images checked."""
    from tqdm import tqdm

    paths = sorted({Path(p) for d in datasets for p in d.image_paths})
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:  # PIL releases the GIL while decoding
        errors = [e for e in tqdm(pool.map(_decode_error, paths), total=len(paths), desc="check images", unit="img",
                                  leave=False, disable=not progress) if e]
    if errors:
        more = f" and {len(errors) - 3} more" if len(errors) > 3 else ""
        raise DatasetError(f"{len(errors)} image(s) cannot be decoded: {'; '.join(errors[:3])}{more}")
    return len(paths)
