"""Splits for a run: the training split, a seeded selection split carved from it, and the eval split."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from mlc.data import MultiLabelDataset, build_dataset


@dataclass
class RunSplits:
    fit: MultiLabelDataset  # trains the weights; label statistics come from it alone
    selection: MultiLabelDataset  # chooses the epoch (model selection)
    evaluation: MultiLabelDataset  # reported only


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

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=1))

    def summary(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k != "selection_ids"}


def carve_selection(num_items: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded split of range(num_items) into (fit, selection) indices, both sorted."""
    order = np.random.default_rng(seed).permutation(num_items)
    n_sel = max(1, int(round(num_items * fraction)))
    if n_sel >= num_items:
        raise ValueError(f"cannot carve {n_sel} selection images out of {num_items} training images")
    return np.sort(order[n_sel:]), np.sort(order[:n_sel])


def build_splits(dataset: str, root: str, train_split: str, eval_split: str, fraction: float, seed: int) -> tuple[RunSplits, SplitInfo]:
    train = build_dataset(dataset, root, train_split)
    evaluation = build_dataset(dataset, root, eval_split)
    if evaluation.classes != train.classes:
        raise ValueError(f"splits {train_split!r} and {eval_split!r} of {root} have different class lists")
    fit_idx, sel_idx = carve_selection(len(train), fraction, seed)
    splits = RunSplits(fit=train.subset(fit_idx), selection=train.subset(sel_idx), evaluation=evaluation)
    info = SplitInfo(
        train=len(fit_idx), selection=len(sel_idx), eval=len(evaluation), selection_fraction=fraction, seed=seed,
        train_split=train_split, eval_split=eval_split, selection_ids=[train.ids[i] for i in sel_idx],
    )
    return splits, info
