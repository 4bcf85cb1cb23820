"""Multi-label evaluation metrics: per-class AP / mAP and CP, CR, CF1, OP, OR, OF1.

Everything works on (N, C) arrays (N images, C classes) and is vectorised over classes: a
COCO-sized evaluation costs one value sort of all columns plus work proportional to the number of
positives, instead of C separate scikit-learn calls (see bench/metrics_speed.py).

Conventions (see docs/CONTRACTS.md):
- ``scores``: real numbers, higher = more confident (probabilities in [0, 1] by default; the
  threshold metrics compare against ``threshold`` so pass 0.0 for logits).
- ``targets``: 1 (positive), 0 (negative), -1 (ignored, e.g. VOC "difficult"). Ignored entries
  are removed from that class's ranking and from every count, exactly as if the row were absent
  for that column.
- All results are fractions in [0, 1], not percentages.

Two AP definitions (both reported, because papers differ):
- ``"sklearn"``: non-interpolated AP, identical to ``sklearn.metrics.average_precision_score``
  (tied scores form one threshold). ML-GCN and ASL report this.
- ``"voc"``: VOC all-point interpolated AP (devkit 2010+ ``voc_ap``, used by SSGRL): precision
  is replaced by its running maximum from the right, then integrated over recall. Not the
  VOC2007 11-point variant. Tied scores are one point of the curve here as well, so the result
  does not depend on how a sort orders ties (the devkit takes one arbitrary order per tie).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np

__all__ = [
    "MetricReport",
    "average_precision",
    "classes_without_positives",
    "evaluate",
    "mean_average_precision",
    "threshold_metrics",
]

AP_MODES = ("sklearn", "voc")


def _validate(scores: Any, targets: Any) -> tuple[np.ndarray, np.ndarray]:
    """Return float scores and int8 targets, or raise ValueError saying what is wrong."""
    s = np.asarray(scores)
    t = np.asarray(targets)
    if s.ndim != 2 or t.ndim != 2:
        raise ValueError(
            f"scores and targets must be 2-D (N images, C classes); got shapes {s.shape} and {t.shape}"
        )
    if s.shape != t.shape:
        raise ValueError(f"scores shape {s.shape} does not match targets shape {t.shape}")
    if s.shape[0] == 0 or s.shape[1] == 0:
        raise ValueError(f"need at least one image and one class; got shape {s.shape}")
    if not np.issubdtype(s.dtype, np.number) or np.iscomplexobj(s):
        raise ValueError(f"scores must be real numbers; got dtype {s.dtype}")
    # float32 stays float32 (exact, and sorts twice as fast); everything else becomes float64.
    s = s.astype(np.float32 if s.dtype == np.float32 else np.float64, copy=False)
    if np.isnan(s).any():
        raise ValueError(f"scores contain {int(np.isnan(s).sum())} NaN value(s)")
    allowed = (t == 1) | (t == 0) | (t == -1)
    if not allowed.all():
        bad = np.unique(t[~allowed])[:5]
        raise ValueError(f"targets must only contain 1, 0 or -1 (ignored); found {bad.tolist()}")
    return s, t.astype(np.int8, copy=False)


def _check_mode(mode: str) -> None:
    if mode not in AP_MODES:
        raise ValueError(f"mode must be one of {AP_MODES}; got {mode!r}")


def _count_at_least(sorted_rows: np.ndarray, n_valid: np.ndarray, rows: np.ndarray, q: np.ndarray) -> np.ndarray:
    """For each query, how many of the first ``n_valid[row]`` entries of its ascending row are >= q.

    A binary search run on all queries at once (about log2(N) numpy steps), so it costs
    O(len(q) log N) instead of one Python-level ``np.searchsorted`` call per class.
    """
    lo = np.zeros(len(q), dtype=np.int64)
    hi = n_valid[rows].astype(np.int64)
    last = sorted_rows.shape[1] - 1
    while True:
        active = lo < hi
        if not active.any():
            break
        mid = (lo + hi) // 2
        go_right = active & (sorted_rows[rows, np.minimum(mid, last)] < q)
        lo = np.where(go_right, mid + 1, lo)
        hi = np.where(active & ~go_right, mid, hi)
    return n_valid[rows] - lo


def _both_ap(s: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Non-interpolated and VOC-interpolated AP per class, sharing one ranking.

    Only the curve points at positives matter: with P positives and, for a positive of score q,
    tp(q) / fp(q) = positives / negatives scoring >= q (a tie group is one threshold),
    AP = (1/P) * sum_positives tp/(tp+fp). Between two positive points precision only falls, so
    the VOC envelope is the running maximum of those same values from the lowest score up.
    Positives are few, so they are sorted exactly and negatives are only value-sorted once;
    ignored (-1) entries are in neither set, exactly as if their rows were absent.
    """
    num_classes = s.shape[1]
    s_cn = np.ascontiguousarray(s.T)  # (C, N): rows are contiguous for sorting and gathering
    t_cn = np.ascontiguousarray(t.T)
    ap = np.full(num_classes, np.nan)
    ap_voc = np.full(num_classes, np.nan)
    cls, col = np.nonzero(t_cn == 1)  # class-major
    if len(cls) == 0:
        return ap, ap_voc

    negative = t_cn == 0
    neg_sorted = np.sort(np.where(negative, s_cn, np.nan), axis=1)  # ascending, NaN padding last
    n_neg = negative.sum(axis=1)
    n_pos = np.bincount(cls, minlength=num_classes)
    first = np.cumsum(n_pos) - n_pos  # index of each class's first positive in the flat arrays

    q = s_cn[cls, col]
    order = np.lexsort((-q, cls))  # by class, then score descending
    cls, q = cls[order], q[order]
    m = len(q)
    group_end = np.ones(m, dtype=bool)  # last positive of each (class, equal score) run
    group_end[:-1] = (cls[1:] != cls[:-1]) | (q[1:] != q[:-1])
    end_idx = np.minimum.accumulate(np.where(group_end, np.arange(m), m - 1)[::-1])[::-1]
    tp = end_idx - first[cls] + 1
    fp = _count_at_least(neg_sorted, n_neg, cls, q)
    precision = tp / (tp + fp)

    has_pos = n_pos > 0
    ap[has_pos] = np.bincount(cls, weights=precision, minlength=num_classes)[has_pos] / n_pos[has_pos]
    # Running max from the lowest-scored positive of each class: pad classes into rows (0 never wins).
    rank = np.arange(m) - first[cls]
    padded = np.zeros((num_classes, int(n_pos.max())))
    padded[cls, rank] = precision
    envelope = np.maximum.accumulate(padded[:, ::-1], axis=1)[:, ::-1][cls, rank]
    ap_voc[has_pos] = np.bincount(cls, weights=envelope, minlength=num_classes)[has_pos] / n_pos[has_pos]
    return ap, ap_voc


def average_precision(scores: Any, targets: Any, mode: str = "sklearn") -> np.ndarray:
    """Per-class AP, shape (C,); ``nan`` for classes with no positive (after ignoring -1)."""
    _check_mode(mode)
    s, t = _validate(scores, targets)
    ap, ap_voc = _both_ap(s, t)
    return ap if mode == "sklearn" else ap_voc


def _nanmean(values: np.ndarray) -> float:
    """Mean over non-nan entries; nan (without a warning) when there are none."""
    ok = ~np.isnan(values)
    return float(values[ok].mean()) if ok.any() else math.nan


def mean_average_precision(scores: Any, targets: Any, mode: str = "sklearn") -> float:
    """mAP over classes with at least one positive; see ``classes_without_positives`` for the rest.

    Returns nan if no class has a positive.
    """
    return _nanmean(average_precision(scores, targets, mode))


def classes_without_positives(targets: Any, classes: Sequence[str] | None = None) -> list[str]:
    """Names (or str indices) of classes that mAP leaves out because they have no target == 1."""
    t = np.asarray(targets)
    if t.ndim != 2:
        raise ValueError(f"targets must be 2-D (N images, C classes); got shape {t.shape}")
    names = _class_names(classes, t.shape[1])
    return [names[c] for c in np.flatnonzero(~(t == 1).any(axis=0))]


def _class_names(classes: Sequence[str] | None, num_classes: int) -> list[str]:
    if classes is None:
        return [str(c) for c in range(num_classes)]
    names = [str(c) for c in classes]
    if len(names) != num_classes:
        raise ValueError(f"got {len(names)} class names for {num_classes} score columns")
    return names


def _f1(p: float, r: float) -> float:
    return 2.0 * p * r / (p + r) if p + r > 0 else 0.0


def _threshold_metrics(s: np.ndarray, t: np.ndarray, threshold: float, top_k: int | None) -> dict[str, float]:
    predicted = s >= np.float64(threshold)  # compare in float64 even for float32 scores
    if top_k is not None and top_k < s.shape[1]:
        # Exactly k per image, like torch.topk in ML-GCN; a tie at the k-th score goes to the lower
        # class index. k argmax passes are much cheaper than sorting every row for small k.
        remaining = s.copy()
        rows = np.arange(s.shape[0])
        in_top = np.zeros_like(predicted)
        for _ in range(top_k):
            best = remaining.argmax(axis=1)
            in_top[rows, best] = True
            remaining[rows, best] = -np.inf
        predicted &= in_top
    valid = t != -1  # top-k is chosen among all scores, then ignored entries are masked out
    positive = t == 1
    predicted &= valid
    n_pred = predicted.sum(axis=0)
    n_correct = (predicted & positive).sum(axis=0)
    n_gt = positive.sum(axis=0)

    cp = float(np.mean(n_correct / np.maximum(n_pred, 1)))
    has_gt = n_gt > 0
    cr = float(np.mean(n_correct[has_gt] / n_gt[has_gt])) if has_gt.any() else 0.0
    op = float(n_correct.sum() / max(int(n_pred.sum()), 1))
    or_ = float(n_correct.sum() / max(int(n_gt.sum()), 1))
    return {"CP": cp, "CR": cr, "CF1": _f1(cp, cr), "OP": op, "OR": or_, "OF1": _f1(op, or_)}


def threshold_metrics(
    scores: Any, targets: Any, threshold: float = 0.5, top_k: int | None = None
) -> dict[str, float]:
    """CP, CR, CF1, OP, OR, OF1 (ML-GCN definitions) for predictions ``score >= threshold``.

    With ``top_k``, an image's prediction is its k highest scores that also pass the threshold
    (exactly k candidates, a tie at the k-th score going to the lower class index).
    Entries with target -1 are dropped from every count. Zero-division rules (no nan, no warnings):
    - a class never predicted has precision 0 (as ML-GCN's code, which sets Np = 1); CP averages
      over all C classes;
    - recall of a class without positives is undefined, so CR averages over classes with at least
      one positive (ML-GCN would give nan); 0 if there are none;
    - OP / OR are 0 when nothing is predicted / nothing is positive; an F1 with P + R = 0 is 0.
    """
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 1):
        raise ValueError(f"top_k must be a positive integer or None; got {top_k!r}")
    s, t = _validate(scores, targets)
    return _threshold_metrics(s, t, float(threshold), None if top_k is None else int(top_k))


@dataclass
class MetricReport:
    """All metrics for one evaluation, as fractions in [0, 1]; nan where undefined.

    ``map`` / ``ap`` use the non-interpolated (scikit-learn) AP, ``map_voc`` / ``ap_voc`` the VOC
    all-point interpolated AP; both means skip ``classes_without_positives``. Threshold metrics
    are at score >= 0.5, the ``_top3`` ones additionally keep only each image's top-3 scores.
    """

    map: float
    map_voc: float
    ap: list[float]
    ap_voc: list[float]
    cp: float
    cr: float
    cf1: float
    op: float
    or_: float
    of1: float
    cp_top3: float
    cr_top3: float
    cf1_top3: float
    op_top3: float
    or_top3: float
    of1_top3: float
    classes: list[str]
    classes_without_positives: list[str]
    num_images: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict (plain floats; nan becomes None)."""
        def clean(v: Any) -> Any:
            if isinstance(v, float) and math.isnan(v):
                return None
            if isinstance(v, list):
                return [clean(x) for x in v]
            return v

        return {k: clean(v) for k, v in asdict(self).items()}


def evaluate(scores: Any, targets: Any, classes: Sequence[str] | None = None) -> MetricReport:
    """Compute every metric once (one sort per class serves both AP definitions)."""
    s, t = _validate(scores, targets)
    names = _class_names(classes, s.shape[1])
    ap, ap_voc = _both_ap(s, t)
    at_half = _threshold_metrics(s, t, 0.5, None)
    top3 = _threshold_metrics(s, t, 0.5, 3)
    return MetricReport(
        map=_nanmean(ap),
        map_voc=_nanmean(ap_voc),
        ap=[float(x) for x in ap],
        ap_voc=[float(x) for x in ap_voc],
        cp=at_half["CP"],
        cr=at_half["CR"],
        cf1=at_half["CF1"],
        op=at_half["OP"],
        or_=at_half["OR"],
        of1=at_half["OF1"],
        cp_top3=top3["CP"],
        cr_top3=top3["CR"],
        cf1_top3=top3["CF1"],
        op_top3=top3["OP"],
        or_top3=top3["OR"],
        of1_top3=top3["OF1"],
        classes=names,
        classes_without_positives=[names[c] for c in np.flatnonzero(np.isnan(ap))],
        num_images=int(s.shape[0]),
    )
