"""Label statistics of a training split: per-class image counts and pairwise co-occurrence.

These counts are the only input the label graphs (``mlc.graph``) need, and they must come from
the training split alone (docs/methods.md, "Label statistics come from the training split alone"),
so they are computed once here and stored with the model as JSON (``to_dict`` / ``from_dict``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

__all__ = ["LabelStatistics", "label_statistics"]


@dataclass
class LabelStatistics:
    """Counts over ``num_images`` images: ``counts[i]`` = n_i, ``cooccurrence[i, j]`` = n_ij.

    The diagonal of ``cooccurrence`` equals ``counts`` (an image "co-occurs" with itself), so the
    matrix alone is enough to rebuild the counts; ``mlc.graph`` ignores the diagonal.
    """

    classes: list[str]
    num_images: int
    counts: np.ndarray  # (C,) int64
    cooccurrence: np.ndarray  # (C, C) int64, symmetric

    def __post_init__(self) -> None:
        self.classes = [str(c) for c in self.classes]
        self.counts = np.asarray(self.counts, dtype=np.int64)
        self.cooccurrence = np.asarray(self.cooccurrence, dtype=np.int64)
        c = len(self.classes)
        if self.counts.shape != (c,) or self.cooccurrence.shape != (c, c):
            raise ValueError(
                f"LabelStatistics for {c} classes needs counts of shape ({c},) and cooccurrence of "
                f"shape ({c}, {c}); got {self.counts.shape} and {self.cooccurrence.shape}"
            )

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable form, so the statistics can be saved beside a checkpoint."""
        return {
            "classes": list(self.classes),
            "num_images": int(self.num_images),
            "counts": self.counts.tolist(),
            "cooccurrence": self.cooccurrence.tolist(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "LabelStatistics":
        """Inverse of ``to_dict``; raises ValueError naming a missing key."""
        missing = [k for k in ("classes", "num_images", "counts", "cooccurrence") if k not in data]
        if missing:
            raise ValueError(f"label statistics are missing key(s): {', '.join(missing)}")
        return cls(
            classes=list(data["classes"]),
            num_images=int(data["num_images"]),
            counts=np.asarray(data["counts"]),
            cooccurrence=np.asarray(data["cooccurrence"]),
        )


def label_statistics(
    labels: np.ndarray, classes: Sequence[str], difficult_as_positive: bool = True
) -> LabelStatistics:
    """Count n_i and n_ij from an (N, C) label matrix with values 1 / 0 / -1.

    -1 ("only difficult objects", VOC) counts as present when ``difficult_as_positive`` (the
    training default), otherwise as absent: a difficult object is still evidence that the two
    labels can appear together, but callers that follow the AP protocol may want to drop it.
    """
    y = np.asarray(labels)
    if y.ndim != 2 or y.shape[1] != len(classes):
        raise ValueError(f"labels must have shape (N, {len(classes)}) for {len(classes)} classes; got {y.shape}")
    if not np.isin(y, (-1, 0, 1)).all():
        raise ValueError("labels must only contain 1 (present), 0 (absent) and -1 (difficult)")
    positive = (y == 1) | ((y == -1) & difficult_as_positive)
    pos = positive.astype(np.int64)
    return LabelStatistics(
        classes=list(classes),
        num_images=int(y.shape[0]),
        counts=pos.sum(axis=0),
        cooccurrence=pos.T @ pos,
    )
