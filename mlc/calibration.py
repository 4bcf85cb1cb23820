"""Decision rules chosen on the selection split: per-class thresholds and an out-of-distribution score.

A model's scores only become labels through a threshold, and one global 0.5 is a poor one for
rare or hard classes. The selection split (held out of training, already used to pick the epoch)
is the one place a run may tune such rules without touching the reported eval split, so:

- ``f1_thresholds``: per class, the threshold maximising F1 on the selection split's scores;
  classes with fewer than ``MIN_POSITIVES`` positives there keep 0.5 (an F1 maximum over a
  handful of positives is noise), and among equally good thresholds the one nearest 0.5 wins.
- ``ood_scores`` / ``ood_threshold``: a per-image "how unlike the training photos" score and
  the threshold that flags at most 5% of the selection split's (in-distribution) images.
- ``Calibration``: both, with what they were computed from, as stored in a checkpoint's
  ``config.json`` under ``"calibration"`` (versioned ``to_dict`` / ``from_dict``).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np

__all__ = [
    "CALIBRATION_VERSION", "Calibration", "CalibrationError", "OOD_SCORES", "calibrate", "decision_report", "f1_thresholds",
    "joint_energy_score", "majority_flag", "ood_scores", "ood_threshold",
]

CALIBRATION_VERSION = 1
DEFAULT_THRESHOLD = 0.5
MIN_POSITIVES = 10  # fewer positives on the selection split: the class keeps DEFAULT_THRESHOLD
OOD_FLAG_RATE = 0.05  # at most this share of in-distribution (selection) images is flagged


class CalibrationError(ValueError):
    """Scores, targets or a stored calibration that cannot be used; the message says why in one line."""


def _as_2d(name: str, values: Any) -> np.ndarray:
    a = np.asarray(values)
    if a.ndim != 2 or a.shape[0] == 0 or a.shape[1] == 0:
        raise CalibrationError(f"{name} must be a non-empty 2-D array (N images, C classes); got shape {a.shape}")
    if not np.issubdtype(a.dtype, np.number) or np.iscomplexobj(a):
        raise CalibrationError(f"{name} must be real numbers; got dtype {a.dtype}")
    a = a.astype(np.float64)
    if not np.isfinite(a).all():
        raise CalibrationError(f"{name} contain {int((~np.isfinite(a)).sum())} NaN or infinite value(s)")
    return a


def _targets(targets: Any, shape: tuple[int, int]) -> np.ndarray:
    t = np.asarray(targets)
    if t.shape != shape:
        raise CalibrationError(f"targets shape {t.shape} does not match scores shape {shape}")
    if not np.isin(t, (-1, 0, 1)).all():
        raise CalibrationError("targets must only contain 1, 0 or -1 (ignored)")
    return t.astype(np.int8)


# -- per-class thresholds ----------------------------------------------------------------------
def f1_thresholds(scores: Any, targets: Any, min_positives: int = MIN_POSITIVES,
                  default: float = DEFAULT_THRESHOLD) -> np.ndarray:
    """Per-class thresholds (predict ``score >= t``) maximising F1 on these scores, shape (C,).

    The candidates of a class are its distinct scores (as ``sklearn.metrics.precision_recall_curve``)
    plus ``default`` itself; F1 = 2 TP / (predicted + positives), so the maximum is exact. Among
    candidates with the maximal F1 the one nearest ``default`` wins: ``default`` whenever it is as good,
    so tuning never moves a threshold for no gain. Classes with fewer than ``min_positives``
    positives keep ``default``. Targets -1 are ignored. Vectorised: one sort of all columns.
    """
    s = _as_2d("scores", scores)
    t = _targets(targets, s.shape)
    valid, positive = t != -1, t == 1
    n_pos = positive.sum(axis=0)
    # descending per column; ignored entries sink to the bottom and never count
    key = np.where(valid, s, -np.inf)
    order = np.argsort(-key, axis=0, kind="stable")
    s_sorted = np.take_along_axis(key, order, axis=0)
    tp = np.cumsum(np.take_along_axis(positive, order, axis=0), axis=0)
    predicted = np.cumsum(np.take_along_axis(valid, order, axis=0), axis=0)
    # a threshold equal to a score predicts its whole tie group: only a group's last row is a candidate
    last = np.ones_like(s_sorted, dtype=bool)
    last[:-1] = s_sorted[:-1] != s_sorted[1:]
    last &= np.isfinite(s_sorted)
    denominator = predicted + n_pos
    f1 = np.where(last & (denominator > 0), 2.0 * tp / np.maximum(denominator, 1), -1.0)
    # F1 at the default threshold itself (exact ratios of integers: equal F1 values compare equal)
    at_default = valid & (s >= default)
    f1_default = 2.0 * (at_default & positive).sum(axis=0) / np.maximum(at_default.sum(axis=0) + n_pos, 1)
    best = np.maximum(f1.max(axis=0), f1_default)
    # among the best candidates, the one nearest the default (a tie in distance goes to the higher one)
    distance = np.where(f1 == best, np.abs(s_sorted - default), np.inf)
    nearest = distance.argmin(axis=0)
    columns = np.arange(s.shape[1])
    chosen = s_sorted[nearest, columns]
    thresholds = np.where(f1_default >= best, default, chosen)
    return np.where(n_pos >= min_positives, thresholds, default).astype(np.float64)


# -- out-of-distribution score ------------------------------------------------------------------
def joint_energy_score(logits: Any) -> np.ndarray:
    """Out-of-distribution score per image (higher = less like the training photos): minus the
    JointEnergy sum_c softplus(logit_c) of Wang et al., "Can multi-label classification networks
    know what they don't know?" (NeurIPS 2021).

    Why this one: in a multi-label model an in-distribution photo may hold several labels, each with
    a high logit; the sum over classes rewards that, whereas the max logit (Hendrycks et al.) only
    sees the strongest class and the single-label energy -logsumexp treats classes as exclusive. Wang
    et al. found the joint energy better than both on VOC and COCO. It needs no extra training, only
    the logits every model already returns, so each of the five variants gets the same score.
    Computed stably from logits (``np.logaddexp(0, x)``), never from saturated probabilities.
    """
    x = _as_2d("logits", logits)
    return -np.logaddexp(0.0, x).sum(axis=1)


OOD_SCORES: dict[str, Callable[[Any], np.ndarray]] = {"joint_energy": joint_energy_score}


def ood_scores(logits: Any, name: str = "joint_energy") -> np.ndarray:
    """The named out-of-distribution score (``OOD_SCORES``) of each image, higher = more unusual."""
    try:
        return OOD_SCORES[name](logits)
    except KeyError:
        raise CalibrationError(f"unknown out-of-distribution score {name!r}; known: {', '.join(OOD_SCORES)}") from None


def ood_threshold(in_distribution: Any, flag_rate: float = OOD_FLAG_RATE) -> float:
    """The threshold above which (``score > t``) at most ``flag_rate`` of these in-distribution
    scores lie: the smallest such sample value, so as many unusual photos as possible are flagged."""
    v = np.sort(np.asarray(in_distribution, dtype=np.float64).ravel())
    if v.size == 0 or not np.isfinite(v).all():
        raise CalibrationError("need at least one finite in-distribution score to set the threshold")
    if not 0.0 <= flag_rate < 1.0:
        raise CalibrationError(f"flag_rate must be in [0, 1); got {flag_rate}")
    allowed = int(math.floor(flag_rate * v.size + 1e-9))  # images that may lie above the threshold
    return float(v[v.size - 1 - allowed])


def majority_flag(flags: Sequence[bool]) -> bool:
    """The notice rule across models: shown when more than half of the models flag the photo."""
    flags = list(flags)
    return bool(flags) and sum(bool(f) for f in flags) * 2 > len(flags)


# -- what a checkpoint stores -------------------------------------------------------------------
@dataclass
class Calibration:
    """Per-class thresholds and the out-of-distribution rule of one model, with their provenance.

    ``thresholds`` apply to probabilities (``sigmoid(logit) >= t``); ``positives`` are the selection
    split's positives per class (a class below ``min_positives`` kept ``DEFAULT_THRESHOLD``).
    An image is flagged when ``ood_scores(logits, ood_score) > ood_threshold``.
    """

    classes: list[str]
    thresholds: list[float]
    positives: list[int]
    selection_size: int
    ood_score: str
    ood_threshold: float
    ood_flag_rate: float = OOD_FLAG_RATE
    min_positives: int = MIN_POSITIVES
    split: str = "selection"
    version: int = CALIBRATION_VERSION
    extra: dict[str, Any] = field(default_factory=dict)  # free-form notes (e.g. how the split was found)

    def __post_init__(self) -> None:
        n = len(self.classes)
        if n == 0 or len(self.thresholds) != n or len(self.positives) != n:
            raise CalibrationError(f"calibration has {len(self.thresholds)} thresholds and {len(self.positives)} "
                                   f"positive counts for {n} classes")
        if not all(isinstance(x, (int, float)) and 0.0 <= float(x) <= 1.0 for x in self.thresholds):
            raise CalibrationError("calibration thresholds must be probabilities in [0, 1]")
        if self.ood_score not in OOD_SCORES:
            raise CalibrationError(f"unknown out-of-distribution score {self.ood_score!r}; known: {', '.join(OOD_SCORES)}")
        if not math.isfinite(float(self.ood_threshold)):
            raise CalibrationError("calibration ood_threshold must be a finite number")
        self.thresholds = [float(x) for x in self.thresholds]
        self.positives = [int(x) for x in self.positives]

    @property
    def tuned(self) -> list[bool]:
        """Which classes had enough selection positives to get a tuned threshold."""
        return [p >= self.min_positives for p in self.positives]

    def predict(self, probabilities: Any) -> np.ndarray:
        """Labels (bool, N x C) of probabilities under the per-class thresholds."""
        p = np.asarray(probabilities, dtype=np.float64)
        if p.ndim != 2 or p.shape[1] != len(self.thresholds):
            raise CalibrationError(f"probabilities must be (N, {len(self.thresholds)}); got shape {p.shape}")
        return p >= np.asarray(self.thresholds)

    def ood_flags(self, logits: Any) -> np.ndarray:
        """Per image (bool, N): whether its out-of-distribution score is above the threshold."""
        return ood_scores(logits, self.ood_score) > self.ood_threshold

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Calibration":
        """Read a stored calibration; a newer or malformed one raises CalibrationError (one line)."""
        if not isinstance(data, Mapping):
            raise CalibrationError(f"calibration must be a JSON object, got {type(data).__name__}")
        version = data.get("version")
        if version != CALIBRATION_VERSION:
            raise CalibrationError(f"calibration format version {version!r} is not supported "
                                   f"(this mlc reads version {CALIBRATION_VERSION})")
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise CalibrationError(f"calibration has unknown fields {unknown}")
        try:
            return cls(**dict(data))
        except TypeError as err:
            raise CalibrationError(f"calibration is incomplete: {err}") from None


def calibrate(probabilities: Any, logits: Any, targets: Any, classes: Sequence[str],
              ood_score: str = "joint_energy", flag_rate: float = OOD_FLAG_RATE,
              min_positives: int = MIN_POSITIVES, **extra: Any) -> Calibration:
    """A model's ``Calibration`` from its selection-split probabilities, logits and targets."""
    p = _as_2d("probabilities", probabilities)
    t = _targets(targets, p.shape)
    if len(classes) != p.shape[1]:
        raise CalibrationError(f"got {len(classes)} class names for {p.shape[1]} score columns")
    scores = ood_scores(logits, ood_score)
    if scores.shape[0] != p.shape[0]:
        raise CalibrationError(f"logits hold {scores.shape[0]} images, probabilities {p.shape[0]}")
    return Calibration(
        classes=list(classes), thresholds=f1_thresholds(p, t, min_positives).tolist(),
        positives=(t == 1).sum(axis=0).tolist(), selection_size=int(p.shape[0]), ood_score=ood_score,
        ood_threshold=ood_threshold(scores, flag_rate), ood_flag_rate=float(flag_rate),
        min_positives=int(min_positives), extra=dict(extra),
    )


def decision_report(probabilities: Any, logits: Any, targets: Any, calibration: Calibration | None) -> dict[str, Any]:
    """What eval.json records about decisions on an evaluation split: CF1/OF1/macro F1/exact match at
    0.5 and, with a calibration, at its per-class thresholds, plus how often its OOD rule fires."""
    from mlc.metrics import decision_metrics

    report: dict[str, Any] = {"decision_metrics": {"0.5": decision_metrics(probabilities, targets, 0.5).to_dict()}}
    if calibration is not None:
        report["decision_metrics"]["tuned"] = decision_metrics(probabilities, targets, calibration.thresholds).to_dict()
        flags = calibration.ood_flags(logits)
        report["ood"] = {"score": calibration.ood_score, "threshold": calibration.ood_threshold,
                         "flagged": int(flags.sum()), "num_images": int(flags.size),
                         "flagged_fraction": float(flags.mean())}
    return report
