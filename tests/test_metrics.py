"""Tests for mlc.metrics: AP against scikit-learn, hand-computed VOC AP and CP..OF1."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from mlc.metrics import (
    average_precision,
    classes_without_positives,
    evaluate,
    mean_average_precision,
    threshold_metrics,
)


def _random(seed: int, n: int = 500, c: int = 20, ignored: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    targets = (rng.random((n, c)) < rng.uniform(0.02, 0.4, size=c)).astype(np.int8)
    scores = np.clip(0.3 * targets + rng.random((n, c)), 0, 1)  # informative but imperfect
    if ignored:
        targets[rng.random((n, c)) < ignored] = -1
    return scores, targets


def _sklearn_ap(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    keep = [targets[:, c] != -1 for c in range(targets.shape[1])]
    return np.array([average_precision_score(targets[k, c], scores[k, c]) for c, k in enumerate(keep)])


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_ap_matches_sklearn(seed: int) -> None:
    scores, targets = _random(seed)
    np.testing.assert_allclose(average_precision(scores, targets), _sklearn_ap(scores, targets), rtol=0, atol=1e-9)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ap_matches_sklearn_with_many_ties(seed: int) -> None:
    scores, targets = _random(seed)
    scores = np.round(scores, 1)  # ~11 distinct values per column
    np.testing.assert_allclose(average_precision(scores, targets), _sklearn_ap(scores, targets), rtol=0, atol=1e-9)


def test_ap_matches_sklearn_for_float32_scores() -> None:
    scores, targets = _random(9)
    scores = scores.astype(np.float32) ** 3  # network-like dtype, some float32 ties
    np.testing.assert_allclose(average_precision(scores, targets), _sklearn_ap(scores, targets), rtol=0, atol=1e-9)


def test_ap_with_extreme_class_balance() -> None:
    scores, targets = _random(8, n=300, c=3)
    targets[:, 0] = 1  # no negatives: AP = 1
    targets[:, 1] = 0
    targets[17, 1] = 1  # a single positive
    targets[:, 2] = 1
    targets[::2, 2] = -1  # positives and ignored entries only
    ap = average_precision(scores, targets)
    np.testing.assert_allclose(ap, _sklearn_ap(scores, targets), rtol=0, atol=1e-9)
    np.testing.assert_allclose(average_precision(scores, targets, mode="voc")[[0, 2]], 1.0)


@pytest.mark.parametrize("seed", [0, 1])
def test_ap_matches_sklearn_with_ignored_entries(seed: int) -> None:
    scores, targets = _random(seed, ignored=0.1)
    scores[::3] = np.round(scores[::3], 1)  # ignored entries inside and between tie groups
    assert (targets == -1).any()
    np.testing.assert_allclose(average_precision(scores, targets), _sklearn_ap(scores, targets), rtol=0, atol=1e-9)


def test_ignored_entries_equal_removed_rows_in_voc_mode() -> None:
    scores, targets = _random(5, n=200, c=1, ignored=0.2)
    keep = targets[:, 0] != -1
    assert average_precision(scores, targets, mode="voc")[0] == pytest.approx(
        average_precision(scores[keep], targets[keep], mode="voc")[0], abs=1e-12
    )


def _devkit_voc_ap(scores: np.ndarray, labels: np.ndarray) -> float:
    """VOC devkit 2010+ / SSGRL ``voc_ap`` for one class (labels 0/1), per item, no tie grouping."""
    order = np.argsort(-scores, kind="stable")
    tp = np.cumsum(labels[order] == 1)
    fp = np.cumsum(labels[order] == 0)
    rec = tp / tp[-1]
    prec = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    mrec = np.concatenate(([0.0], rec, [1.0]))
    mpre = np.concatenate(([0.0], prec, [0.0]))
    for i in range(mpre.size - 1, 0, -1):
        mpre[i - 1] = max(mpre[i - 1], mpre[i])
    i = np.where(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))


@pytest.mark.parametrize("seed", [0, 1])
def test_voc_ap_matches_devkit_without_ties(seed: int) -> None:
    scores, targets = _random(seed, ignored=0.1)  # continuous scores: no ties
    expected = [
        _devkit_voc_ap(scores[targets[:, c] != -1, c], targets[targets[:, c] != -1, c]) for c in range(targets.shape[1])
    ]
    np.testing.assert_allclose(average_precision(scores, targets, mode="voc"), expected, rtol=0, atol=1e-12)


def test_voc_ap_hand_computed_and_above_non_interpolated() -> None:
    # Ranked by score: labels 1 0 0 1 1 0, P = 3.
    #   rank:       1    2    3    4    5    6
    #   precision:  1/1  1/2  1/3  2/4  3/5  3/6
    # Non-interpolated: mean precision at the positives = (1 + 1/2 + 3/5) / 3 = 2.1 / 3 = 0.7.
    # VOC: precision at rank 4 is raised to max(2/4, 3/5, 3/6) = 3/5, so
    #   (1 + 3/5 + 3/5) / 3 = 2.2 / 3 = 0.7333...
    scores = np.array([[0.9], [0.8], [0.7], [0.6], [0.5], [0.4]])
    targets = np.array([[1], [0], [0], [1], [1], [0]])
    voc = average_precision(scores, targets, mode="voc")[0]
    plain = average_precision(scores, targets, mode="sklearn")[0]
    assert voc == pytest.approx(2.2 / 3, abs=1e-12)
    assert plain == pytest.approx(0.7, abs=1e-12)
    assert voc > plain


def test_voc_ap_ties_are_one_point_and_order_independent() -> None:
    # Scores 0.9 | 0.8 0.8 | 0.5 with labels 1 | 0 1 | 0: curve points (r, p) = (1/2, 1), (1, 2/3), (1, 1/2).
    # Both AP definitions: 1/2 * 1 + 1/2 * 2/3 = 5/6, whichever order the tied pair is sorted in.
    targets = np.array([[1], [0], [1], [0]])
    scores = np.array([[0.9], [0.8], [0.8], [0.5]])
    for perm in ([0, 1, 2, 3], [0, 2, 1, 3], [3, 2, 1, 0]):
        for mode in ("sklearn", "voc"):
            assert average_precision(scores[perm], targets[perm], mode=mode)[0] == pytest.approx(5 / 6, abs=1e-12)


def test_voc_at_least_non_interpolated_on_random_data() -> None:
    scores, targets = _random(7, ignored=0.05)
    assert np.all(average_precision(scores, targets, "voc") >= average_precision(scores, targets) - 1e-12)


def test_class_without_positives_is_nan_and_excluded() -> None:
    scores, targets = _random(3, n=100, c=4)
    targets[:, 2] = 0
    targets[:5, 2] = -1  # ignored entries are not positives
    for mode in ("sklearn", "voc"):
        ap = average_precision(scores, targets, mode=mode)
        assert np.isnan(ap[2]) and not np.isnan(ap[[0, 1, 3]]).any()
        assert mean_average_precision(scores, targets, mode=mode) == pytest.approx(np.mean(ap[[0, 1, 3]]))
    report = evaluate(scores, targets, classes=["a", "b", "c", "d"])
    assert report.classes_without_positives == ["c"]
    assert classes_without_positives(targets, ["a", "b", "c", "d"]) == ["c"]
    assert report.map == pytest.approx(np.nanmean(report.ap))
    assert report.to_dict()["ap"][2] is None


# 4 images x 4 classes; the (image 2, class 2) target is -1 (ignored).
SCORES = np.array(
    [
        [0.9, 0.6, 0.5, 0.7],
        [0.2, 0.8, 0.45, 0.1],
        [0.7, 0.3, 0.9, 0.6],
        [0.1, 0.2, 0.3, 0.45],
    ]
)
TARGETS = np.array(
    [
        [1, 0, 0, 1],
        [0, 1, 1, 0],
        [1, 0, -1, 0],
        [0, 0, 1, 1],
    ]
)


def test_threshold_metrics_at_half_hand_computed() -> None:
    # Predicted (score >= 0.5, ignored entry dropped): img0 {0,1,2,3}, img1 {1}, img2 {0,3}, img3 {}.
    # class: Np Nc Ng -> P, R
    #   0:   2  2  2  -> 1,   1
    #   1:   2  1  1  -> 1/2, 1
    #   2:   1  0  2  -> 0,   0     (img2 is ignored, 0.5 counts as predicted)
    #   3:   2  1  2  -> 1/2, 1/2
    # CP = 2/4 = 0.5, CR = 2.5/4 = 0.625, CF1 = 2*0.5*0.625/1.125 = 5/9
    # OP = 4/7, OR = 4/7, OF1 = 4/7
    m = threshold_metrics(SCORES, TARGETS, threshold=0.5)
    expected = {"CP": 0.5, "CR": 0.625, "CF1": 5 / 9, "OP": 4 / 7, "OR": 4 / 7, "OF1": 4 / 7}
    assert m == pytest.approx(expected, abs=1e-12)


def test_threshold_metrics_top3_hand_computed() -> None:
    # Top-3 per image that are also >= 0.5: img0 {0,3,1} (class 2 at 0.5 is 4th), img1 {1},
    # img2 {2 (ignored), 0, 3}, img3 {}.
    # class: Np Nc Ng -> P, R
    #   0:   2  2  2  -> 1,   1
    #   1:   2  1  1  -> 1/2, 1
    #   2:   0  0  2  -> 0 (never predicted: 0/0 counts as 0), 0
    #   3:   2  1  2  -> 1/2, 1/2
    # CP = 0.5, CR = 0.625, CF1 = 5/9; OP = 4/6 = 2/3, OR = 4/7, OF1 = 2*(2/3)*(4/7)/(2/3+4/7) = 8/13
    m = threshold_metrics(SCORES, TARGETS, threshold=0.5, top_k=3)
    expected = {"CP": 0.5, "CR": 0.625, "CF1": 5 / 9, "OP": 2 / 3, "OR": 4 / 7, "OF1": 8 / 13}
    assert m == pytest.approx(expected, abs=1e-12)
    report = evaluate(SCORES, TARGETS)
    assert (report.op_top3, report.of1_top3, report.op) == pytest.approx((2 / 3, 8 / 13, 4 / 7), abs=1e-12)


def test_threshold_metrics_nothing_predicted_has_no_nan() -> None:
    with np.errstate(all="raise"):
        m = threshold_metrics(np.zeros((3, 2)), np.array([[1, 0], [0, 0], [-1, 0]]))
    assert m == {"CP": 0.0, "CR": 0.0, "CF1": 0.0, "OP": 0.0, "OR": 0.0, "OF1": 0.0}


def test_evaluate_to_dict_is_json_dumpable() -> None:
    scores, targets = _random(4, n=50, c=5)
    targets[:, 4] = 0
    report = evaluate(scores, targets, classes=list("abcde"))
    d = json.loads(json.dumps(report.to_dict(), allow_nan=False))
    assert d["num_images"] == 50 and d["classes"] == list("abcde")
    assert d["classes_without_positives"] == ["e"] and d["ap_voc"][4] is None
    assert d["map"] == pytest.approx(mean_average_precision(scores, targets))
    assert d["map_voc"] == pytest.approx(mean_average_precision(scores, targets, mode="voc"))
    assert all(0.0 <= d[k] <= 1.0 for k in ("map", "map_voc", "cp", "cr", "cf1", "op", "or_", "of1"))


def test_all_classes_without_positives_gives_nan_map() -> None:
    report = evaluate(np.random.default_rng(0).random((4, 2)), np.zeros((4, 2), dtype=np.int8))
    assert math.isnan(report.map) and report.to_dict()["map_voc"] is None


@pytest.mark.parametrize(
    ("scores", "targets", "message"),
    [
        (np.zeros(4), np.zeros(4), "2-D"),
        (np.zeros((4, 3)), np.zeros((4, 2)), "does not match"),
        (np.zeros((0, 3)), np.zeros((0, 3)), "at least one"),
        (np.full((2, 2), np.nan), np.zeros((2, 2)), "NaN"),
        (np.zeros((2, 2)), np.full((2, 2), 2), "1, 0 or -1"),
    ],
)
def test_invalid_inputs_raise_value_error(scores: np.ndarray, targets: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        evaluate(scores, targets)


def test_invalid_arguments_raise_value_error() -> None:
    with pytest.raises(ValueError, match="mode"):
        average_precision(SCORES, TARGETS, mode="11point")
    with pytest.raises(ValueError, match="top_k"):
        threshold_metrics(SCORES, TARGETS, top_k=0)
    with pytest.raises(ValueError, match="class names"):
        evaluate(SCORES, TARGETS, classes=["a"])
