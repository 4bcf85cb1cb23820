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

Is a difference between two models real? ``paired_bootstrap`` resamples the evaluation images
with replacement (the same resampled images for both models) and gives a percentile interval for
the mAP difference; see its docstring. It never builds the resampled arrays: AP on a resample with
duplicated images equals AP with each image weighted by how often it was drawn
(``weighted_average_precision``), so a model needs one sort per class, not one per resample.

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
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

__all__ = [
    "BootstrapResult",
    "MetricReport",
    "average_precision",
    "bootstrap_counts",
    "bootstrap_versus_reference",
    "DecisionMetrics",
    "classes_without_positives",
    "decision_metrics",
    "evaluate",
    "mean_average_precision",
    "paired_bootstrap",
    "resampled_map",
    "seed_interval",
    "seed_summary",
    "threshold_metrics",
    "weighted_average_precision",
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


def nanmean(values: np.ndarray) -> float:
    """Mean over non-nan entries; nan (without a warning) when there are none."""
    ok = ~np.isnan(values)
    return float(values[ok].mean()) if ok.any() else math.nan


def mean_average_precision(scores: Any, targets: Any, mode: str = "sklearn") -> float:
    """mAP over classes with at least one positive; see ``classes_without_positives`` for the rest.

    Returns nan if no class has a positive.
    """
    return nanmean(average_precision(scores, targets, mode))


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


def _threshold_metrics(s: np.ndarray, t: np.ndarray, threshold: float | np.ndarray,
                       top_k: int | None) -> dict[str, float]:
    # compare in float64 even for float32 scores; a (C,) threshold is one per class
    predicted = s >= np.asarray(threshold, dtype=np.float64)
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

    exact = float(np.mean(((predicted == positive) | ~valid).all(axis=1)))
    f1_per_class = 2.0 * n_correct / np.maximum(n_pred + n_gt, 1)
    cp = float(np.mean(n_correct / np.maximum(n_pred, 1)))
    has_gt = n_gt > 0
    cr = float(np.mean(n_correct[has_gt] / n_gt[has_gt])) if has_gt.any() else 0.0
    op = float(n_correct.sum() / max(int(n_pred.sum()), 1))
    or_ = float(n_correct.sum() / max(int(n_gt.sum()), 1))
    return {"CP": cp, "CR": cr, "CF1": _f1(cp, cr), "OP": op, "OR": or_, "OF1": _f1(op, or_),
            "macro_F1": float(f1_per_class.mean()), "exact_match": exact}


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
    out = _threshold_metrics(s, t, float(threshold), None if top_k is None else int(top_k))
    return {k: out[k] for k in ("CP", "CR", "CF1", "OP", "OR", "OF1")}


@dataclass
class DecisionMetrics:
    """What the labels a model outputs are worth, under one decision rule (global or per-class
    thresholds), as fractions in [0, 1].

    ``cf1`` is ML-GCN's CF1 (the F1 of the class-averaged precision and recall), comparable with the
    papers; ``macro_f1`` the mean of per-class F1s (scikit-learn's ``f1_score(average="macro")``);
    ``of1`` pooled over all image-label pairs (``average="micro"``); ``exact_match`` the share of
    images whose whole label set is right (subset accuracy, ``accuracy_score``).
    """

    thresholds: str  # "0.5" or "per-class"
    cp: float
    cr: float
    cf1: float
    op: float
    or_: float
    of1: float
    macro_f1: float
    exact_match: float
    num_images: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def decision_metrics(scores: Any, targets: Any, thresholds: float | Sequence[float] = 0.5) -> DecisionMetrics:
    """CP/CR/CF1, OP/OR/OF1, macro F1 and exact match of ``score >= threshold`` (a float, or one
    threshold per class). Zero divisions count as 0 (scikit-learn's ``zero_division=0``); targets
    -1 are ignored (an image with only ignored entries wrong still matches exactly)."""
    s, t = _validate(scores, targets)
    th = np.asarray(thresholds, dtype=np.float64)
    if th.ndim > 1 or (th.ndim == 1 and th.shape[0] != s.shape[1]):
        raise ValueError(f"thresholds must be one number or one per class ({s.shape[1]}); got shape {th.shape}")
    if np.isnan(th).any():
        raise ValueError("thresholds contain NaN")
    m = _threshold_metrics(s, t, th, None)
    label = f"{float(th):g}" if th.ndim == 0 else "per-class"
    return DecisionMetrics(thresholds=label, cp=m["CP"], cr=m["CR"], cf1=m["CF1"], op=m["OP"], or_=m["OR"],
                           of1=m["OF1"], macro_f1=m["macro_F1"], exact_match=m["exact_match"],
                           num_images=int(s.shape[0]))


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
        map=nanmean(ap),
        map_voc=nanmean(ap_voc),
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


# ---------------------------------------------------------------------------------------------
# Seeds and the paired bootstrap
# ---------------------------------------------------------------------------------------------


def seed_summary(values: Sequence[float | None]) -> tuple[float, float, int]:
    """``(mean, std, n)`` of one metric over seeds; ``std`` is the sample std (ddof=1).

    None / nan values (an undefined metric) are left out and not counted in ``n``. ``std`` is nan
    when n < 2 (the spread is unknown from one seed) and ``mean`` is nan when n == 0.
    """
    v = np.array([math.nan if x is None else float(x) for x in values], dtype=np.float64)
    v = v[~np.isnan(v)]
    n = int(v.size)
    mean = float(v.mean()) if n else math.nan
    std = float(v.std(ddof=1)) if n >= 2 else math.nan
    return mean, std, n


def seed_interval(values: Sequence[float | None], confidence: float = 0.95) -> tuple[float, float]:
    """Interval for the mean of a metric over training seeds: mean ± t(1 - a/2, n - 1) * std / sqrt(n)
    (Student's t, the seeds taken as independent draws of the training noise). With 3 seeds the
    factor is 4.30: wide, as it should be. ``(nan, nan)`` for fewer than 2 values."""
    from scipy.stats import t as student_t  # scipy comes with scikit-learn

    mean, std, n = seed_summary(values)
    if n < 2:
        return math.nan, math.nan
    half = float(student_t.ppf(0.5 + confidence / 2, n - 1)) * std / math.sqrt(n)
    return mean - half, mean + half


def bootstrap_counts(num_images: int, num_samples: int = 1000, seed: int = 0) -> np.ndarray:
    """How often each image is drawn in each bootstrap resample: int32 array (num_samples, num_images).

    The draws are exactly ``np.random.default_rng(seed).integers(0, num_images, size=(num_samples,
    num_images))`` (row b = the image indices of resample b), so an explicit resampling loop with
    the same call sees the same resamples.
    """
    if num_images < 1 or num_samples < 1:
        raise ValueError(f"need num_images >= 1 and num_samples >= 1; got {num_images}, {num_samples}")
    idx = np.random.default_rng(seed).integers(0, num_images, size=(num_samples, num_images))
    flat = idx + num_images * np.arange(num_samples)[:, None]
    counts = np.bincount(flat.ravel(), minlength=num_samples * num_images)
    return counts.reshape(num_samples, num_images).astype(np.int32)


def _validate_weights(weights: Any, num_images: int) -> tuple[np.ndarray, bool]:
    w = np.asarray(weights)
    single = w.ndim == 1
    if single:
        w = w[None, :]
    if w.ndim != 2 or w.shape[1] != num_images:
        raise ValueError(f"weights must have shape (N,) or (B, N) with N = {num_images}; got {np.shape(weights)}")
    if not np.issubdtype(w.dtype, np.number) or np.iscomplexobj(w):
        raise ValueError(f"weights must be real numbers; got dtype {w.dtype}")
    if np.isnan(w).any() or (w < 0).any():
        raise ValueError("weights must be non-negative numbers (no NaN)")
    return w, single


def _weighted_ap(s: np.ndarray, t: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Non-interpolated AP per (weighting, class) for weights ``w`` of shape (B, N); returns (B, C).

    For one positive of score q, tp(q) / fp(q) are the weights of positives / negatives scoring
    >= q (a tie group is one threshold, as in scikit-learn), and
    AP_b = sum_k w_bk * tp_bk / (tp_bk + fp_bk) / sum_k w_bk over the positives k. Per class, the
    orders (positives by score, all non-ignored entries by score) and, for each positive, where its
    tie group ends and how many entries score >= q do not depend on the weights, so every weighting
    costs two cumulative sums along those fixed orders plus gathers. With integer weights this is
    AP on the data set in which image i appears w_i times.
    """
    num_classes = s.shape[1]
    num_rows = w.shape[0]
    if np.issubdtype(w.dtype, np.integer):
        # int32 cumulative sums along contiguous rows are several times faster than int64 ones
        acc = np.int32 if int(w.sum(axis=1, dtype=np.int64).max()) < 2**31 else np.int64
    else:
        acc = np.float64
    w = np.ascontiguousarray(w, dtype=acc)
    ap = np.full((num_rows, num_classes), np.nan)
    for c in range(num_classes):
        col, tc = s[:, c], t[:, c]
        pos = np.flatnonzero(tc == 1)
        if pos.size == 0:
            continue
        pos = pos[np.argsort(-col[pos], kind="stable")]
        q = col[pos]  # descending
        run_end = np.ones(q.size, dtype=bool)  # last positive of each equal-score run
        run_end[:-1] = q[1:] != q[:-1]
        end = np.minimum.accumulate(np.where(run_end, np.arange(q.size), q.size - 1)[::-1])[::-1]
        valid = np.flatnonzero(tc != -1)
        valid_scores = col[valid]
        ascending = np.argsort(valid_scores, kind="stable")
        at_least = valid.size - np.searchsorted(valid_scores[ascending], q, side="left")  # entries >= q (>= 1)
        w_pos = np.take(w, pos, axis=1)  # (B, P), C-contiguous
        tp = np.cumsum(w_pos, axis=1, dtype=acc)[:, end]
        total = np.cumsum(np.take(w, valid[ascending[::-1]], axis=1), axis=1, dtype=acc)[:, at_least - 1]
        precision = tp / np.where(total > 0, total, 1)  # 0 only where the positive's weight is 0 too
        den = w_pos.sum(axis=1, dtype=np.float64)
        num = np.einsum("bp,bp->b", w_pos.astype(np.float64), precision)
        ok = den > 0
        ap[ok, c] = num[ok] / den[ok]
    return ap


def weighted_average_precision(scores: Any, targets: Any, weights: Any) -> np.ndarray:
    """Per-class non-interpolated (scikit-learn) AP with non-negative per-image weights.

    ``weights`` of shape (N,) gives (C,); shape (B, N) gives (B, C), one row per weighting. With
    integer weights the result equals ``average_precision`` on the rows repeated ``w_i`` times
    (what a bootstrap resample is), ties included; all-ones weights give ``average_precision``.
    nan where a class has no positive of positive weight. Targets -1 are ignored as usual.
    """
    s, t = _validate(scores, targets)
    w, single = _validate_weights(weights, s.shape[0])
    ap = _weighted_ap(s, t, w)
    return ap[0] if single else ap


def _nanmean_rows(ap: np.ndarray) -> np.ndarray:
    ok = ~np.isnan(ap)
    n = ok.sum(axis=1)
    total = np.where(ok, ap, 0.0).sum(axis=1)
    return np.where(n > 0, total / np.maximum(n, 1), np.nan)


def _score_list(scores: Any, shape: tuple[int, ...], name: str) -> list[np.ndarray]:
    """One (N, C) array per seed: a single array, or a list / tuple of them."""
    items = list(scores) if isinstance(scores, (list, tuple)) else [scores]
    if not items:
        raise ValueError(f"{name}: need at least one score array")
    out = []
    for i, item in enumerate(items):
        arr = np.asarray(item)
        if arr.shape != shape:
            raise ValueError(f"{name}[{i}] has shape {arr.shape}; expected {shape} like the targets")
        out.append(arr)
    return out


def resampled_map(scores: Any, targets: Any, counts: Any) -> np.ndarray:
    """mAP on each resample, shape (B,): ``counts`` (B, N) from ``bootstrap_counts``.

    ``scores`` is one (N, C) array or a list of them (one per seed); with several, a resample's mAP
    is the mean over the seeds' mAPs on that resample. Classes without a positive in a resample are
    left out of its mAP (nan if none has one).
    """
    t = np.asarray(targets)
    if t.ndim != 2:
        raise ValueError(f"targets must be 2-D (N images, C classes); got shape {t.shape}")
    w, _ = _validate_weights(counts, t.shape[0])
    per_seed = []
    for arr in _score_list(scores, t.shape, "scores"):
        s, tt = _validate(arr, t)
        per_seed.append(_nanmean_rows(_weighted_ap(s, tt, w)))
    return np.mean(per_seed, axis=0)


@dataclass
class BootstrapResult:
    """Paired bootstrap of the mAP difference ``B - A`` (fractions, not percent).

    - ``difference``: mAP_B - mAP_A on the full evaluation set (each mAP a mean over that model's
      seeds); ``map_a`` / ``map_b`` are those two means.
    - ``low`` / ``high``: percentile interval (``confidence``, e.g. 2.5th and 97.5th percentile,
      numpy's default linear interpolation) of the resampled differences.
    - ``p_value``: two-sided bootstrap p-value, ``min(1, 2 * min(share(d <= 0), share(d >= 0)))``
      over the resampled differences d: small when nearly all resamples agree on the sign. It is 1
      for identical models; it is not below 2 / num_samples unless every resample has one strict sign
      (then 0: report it as "< 1 / num_samples").
    - ``num_samples``: resamples drawn; ``num_valid`` of them had a defined mAP (normally all).
    - ``differences``: the resampled differences, shape (num_samples,) (not in ``to_dict``).
    """

    difference: float
    low: float
    high: float
    p_value: float
    map_a: float
    map_b: float
    num_samples: int
    num_valid: int
    confidence: float
    seed: int
    num_images: int
    num_seeds_a: int
    num_seeds_b: int
    differences: np.ndarray = field(repr=False, compare=False)

    @property
    def verdict(self) -> str:
        """``"better"`` (interval above 0), ``"worse"`` (below 0) or ``"not distinguishable"``."""
        if self.low > 0:
            return "better"
        if self.high < 0:
            return "worse"
        return "not distinguishable"

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict of the scalar fields plus ``verdict`` (nan becomes None)."""
        out: dict[str, Any] = {}
        for k, v in asdict(self).items():
            if k == "differences":
                continue
            out[k] = None if isinstance(v, float) and math.isnan(v) else v
        out["verdict"] = self.verdict
        return out


def _full_map(scores: list[np.ndarray], targets: np.ndarray) -> float:
    return float(np.mean([mean_average_precision(s, targets) for s in scores]))


def _result(diffs: np.ndarray, map_a: float, map_b: float, confidence: float, seed: int,
            num_images: int, n_a: int, n_b: int) -> BootstrapResult:
    finite = diffs[~np.isnan(diffs)]
    alpha = 1.0 - confidence
    if finite.size:
        low, high = (float(x) for x in np.quantile(finite, [alpha / 2, 1 - alpha / 2]))
        p = float(min(1.0, 2.0 * min(np.mean(finite <= 0), np.mean(finite >= 0))))
    else:
        low = high = p = math.nan
    return BootstrapResult(
        difference=map_b - map_a, low=low, high=high, p_value=p, map_a=map_a, map_b=map_b,
        num_samples=int(diffs.size), num_valid=int(finite.size), confidence=float(confidence),
        seed=int(seed), num_images=int(num_images), num_seeds_a=n_a, num_seeds_b=n_b, differences=diffs,
    )


def bootstrap_versus_reference(
    reference: Any,
    candidates: Mapping[str, Any],
    targets: Any,
    num_samples: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> dict[str, BootstrapResult]:
    """``paired_bootstrap(reference, candidate, ...)`` for every candidate, on the same resamples.

    The reference's resampled mAPs are computed once; each result equals the corresponding
    ``paired_bootstrap`` call with the same ``seed``.
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1); got {confidence}")
    t = np.asarray(targets)
    if t.ndim != 2:
        raise ValueError(f"targets must be 2-D (N images, C classes); got shape {t.shape}")
    ref = _score_list(reference, t.shape, "reference scores")
    others = {name: _score_list(s, t.shape, f"scores of {name!r}") for name, s in candidates.items()}
    counts = bootstrap_counts(t.shape[0], num_samples, seed)
    ref_samples = resampled_map(ref, t, counts)
    ref_map = _full_map(ref, t)
    out = {}
    for name, scores in others.items():
        diffs = resampled_map(scores, t, counts) - ref_samples
        out[name] = _result(diffs, ref_map, _full_map(scores, t), confidence, seed, t.shape[0], len(ref), len(scores))
    return out


def paired_bootstrap(
    scores_a: Any,
    scores_b: Any,
    targets: Any,
    num_samples: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> BootstrapResult:
    """Paired bootstrap over images of the mAP difference ``mAP(B) - mAP(A)``.

    ``scores_a`` / ``scores_b`` are (N, C) arrays or lists of them (one per training seed; the two
    lists may differ in length); ``targets`` (N, C) in {1, 0, -1} is shared. Each resample draws N
    image indices with replacement (``bootstrap_counts``: the same indices for both models and all
    seeds); a model's mAP on it is the mean over its seeds of ``mean_average_precision`` (scikit-
    learn AP, -1 ignored, classes without a positive in the resample left out) on the resampled
    rows. The interval is the percentile interval of the resampled differences, so it reflects the
    finite evaluation set (and, with several seeds, averages out seed noise in the means); it does
    not measure seed-to-seed spread. See ``BootstrapResult`` for the fields and the p-value.
    """
    return bootstrap_versus_reference(scores_a, {"b": scores_b}, targets, num_samples, seed, confidence)["b"]
