"""Tests for mlc.metrics: AP against scikit-learn, hand-computed VOC AP and CP..OF1."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from mlc.metrics import (
    average_precision,
    bootstrap_counts,
    bootstrap_versus_reference,
    classes_without_positives,
    evaluate,
    mean_average_precision,
    paired_bootstrap,
    resampled_map,
    seed_interval,
    seed_summary,
    threshold_metrics,
    weighted_average_precision,
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


# --- paired bootstrap ------------------------------------------------------------------------


def _tied(seed: int, n: int = 40, c: int = 6, strength: float = 0.3) -> tuple[np.ndarray, np.ndarray]:
    """Scores rounded to 1 decimal (many ties, positives tied with negatives) and ~10% ignored targets."""
    scores, targets = _random(seed, n=n, c=c, ignored=0.1)
    rng = np.random.default_rng(seed + 100)
    scores = np.round(np.clip(strength * (targets == 1) + rng.random((n, c)), 0, 1), 1)
    return scores, targets


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_weighted_ap_with_integer_weights_equals_ap_on_repeated_rows(seed: int) -> None:
    scores, targets = _tied(seed)
    rng = np.random.default_rng(seed)
    weights = rng.integers(0, 4, size=(5, len(scores)))  # zeros drop images, >1 duplicates them
    weights[0] = 1
    got = weighted_average_precision(scores, targets, weights)
    assert got.shape == (5, scores.shape[1])
    for w, row in zip(weights, got):
        rows = np.repeat(np.arange(len(scores)), w)
        np.testing.assert_allclose(row, average_precision(scores[rows], targets[rows]), rtol=0, atol=1e-12)
    np.testing.assert_allclose(got[0], average_precision(scores, targets), rtol=0, atol=1e-12)
    s32 = scores.astype(np.float32)
    rows = np.repeat(np.arange(len(scores)), weights[1])
    single = weighted_average_precision(s32, targets, weights[1])  # 1-D weights give (C,)
    np.testing.assert_allclose(single, average_precision(s32[rows], targets[rows]), rtol=0, atol=1e-12)


def test_weighted_ap_class_without_weighted_positive_is_nan() -> None:
    scores, targets = SCORES, TARGETS
    weights = np.array([0, 1, 1, 1])  # class 0's positives are images 0 and 2: image 2 is left
    weights2 = np.array([0, 1, 0, 1])  # neither is left: class 0 has no positive
    assert not np.isnan(weighted_average_precision(scores, targets, weights)[0])
    assert np.isnan(weighted_average_precision(scores, targets, weights2)[0])
    with pytest.raises(ValueError, match="weights"):
        weighted_average_precision(scores, targets, np.ones(3))
    with pytest.raises(ValueError, match="non-negative"):
        weighted_average_precision(scores, targets, -np.ones(4))


def test_bootstrap_counts_are_the_documented_draws() -> None:
    counts = bootstrap_counts(7, num_samples=5, seed=3)
    idx = np.random.default_rng(3).integers(0, 7, size=(5, 7))
    assert counts.shape == (5, 7) and (counts.sum(axis=1) == 7).all()
    for row, drawn in zip(counts, idx):
        np.testing.assert_array_equal(row, np.bincount(drawn, minlength=7))


def _slow_bootstrap(scores_a, scores_b, targets, num_samples, seed, confidence=0.95):
    """Explicit resampling with the same draws as ``bootstrap_counts``."""
    n = len(targets)
    idx = np.random.default_rng(seed).integers(0, n, size=(num_samples, n))
    diffs = []
    for i in idx:
        map_a = np.mean([mean_average_precision(s[i], targets[i]) for s in scores_a])
        map_b = np.mean([mean_average_precision(s[i], targets[i]) for s in scores_b])
        diffs.append(map_b - map_a)
    diffs = np.array(diffs)
    alpha = 1 - confidence
    low, high = np.quantile(diffs, [alpha / 2, 1 - alpha / 2])
    p = min(1.0, 2 * min(np.mean(diffs <= 0), np.mean(diffs >= 0)))
    full = np.mean([mean_average_precision(s, targets) for s in scores_b]) - np.mean(
        [mean_average_precision(s, targets) for s in scores_a])
    return diffs, full, low, high, p


@pytest.mark.parametrize("seed", [0, 5])
def test_paired_bootstrap_matches_slow_resampling_loop(seed: int) -> None:
    _, targets = _tied(seed)
    rng = np.random.default_rng(seed + 7)
    # two seeds for A, three for B (float32, as saved by training); rounded scores give many ties
    scores_a = [np.round(np.clip(0.2 * (targets == 1) + rng.random(targets.shape), 0, 1), 1) for _ in range(2)]
    scores_b = [np.round(np.clip(0.4 * (targets == 1) + rng.random(targets.shape), 0, 1), 1).astype(np.float32)
                for _ in range(3)]
    res = paired_bootstrap(scores_a, scores_b, targets, num_samples=200, seed=seed, confidence=0.9)
    diffs, full, low, high, p = _slow_bootstrap(scores_a, scores_b, targets, 200, seed, confidence=0.9)
    np.testing.assert_allclose(res.differences, diffs, rtol=0, atol=1e-9)
    assert res.difference == pytest.approx(full, abs=1e-9)
    assert (res.low, res.high, res.p_value) == pytest.approx((low, high, p), abs=1e-9)
    assert res.num_samples == res.num_valid == 200 and res.num_images == len(targets)
    assert (res.num_seeds_a, res.num_seeds_b, res.seed, res.confidence) == (2, 3, seed, 0.9)
    single = paired_bootstrap(scores_a[0], scores_b[0], targets, num_samples=50, seed=seed)
    diffs1, full1, low1, high1, _ = _slow_bootstrap(scores_a[:1], scores_b[:1], targets, 50, seed)
    assert (single.difference, single.low, single.high) == pytest.approx((full1, low1, high1), abs=1e-9)
    counts = bootstrap_counts(len(targets), 50, seed)
    np.testing.assert_allclose(resampled_map(scores_b[0], targets, counts) - resampled_map(scores_a[0], targets, counts),
                               diffs1, atol=1e-9)


def test_identical_models_give_zero_difference_and_interval() -> None:
    scores, targets = _tied(3, n=60)
    res = paired_bootstrap([scores, scores], [scores, scores], targets, num_samples=100)
    assert res.difference == 0 and res.low == 0 and res.high == 0
    assert res.p_value == 1.0 and res.verdict == "not distinguishable"
    assert json.loads(json.dumps(res.to_dict(), allow_nan=False))["verdict"] == "not distinguishable"
    assert "differences" not in res.to_dict()


def test_clearly_better_model_interval_excludes_zero() -> None:
    rng = np.random.default_rng(0)
    targets = (rng.random((200, 5)) < 0.3).astype(np.int8)
    good = targets + 0.1 * rng.random(targets.shape)
    bad = rng.random(targets.shape)
    better = paired_bootstrap(bad, good, targets, num_samples=300)
    assert better.low > 0 and better.verdict == "better" and better.p_value < 0.01
    worse = paired_bootstrap(good, bad, targets, num_samples=300)
    assert worse.high < 0 and worse.verdict == "worse"
    assert worse.difference == pytest.approx(-better.difference)


def test_bootstrap_versus_reference_equals_pairwise_calls() -> None:
    scores, targets = _tied(4, n=50)
    rng = np.random.default_rng(1)
    others = {"x": rng.random(targets.shape), "y": [scores, rng.random(targets.shape)]}
    many = bootstrap_versus_reference(scores, others, targets, num_samples=80, seed=2)
    for name, s in others.items():
        one = paired_bootstrap(scores, s, targets, num_samples=80, seed=2)
        np.testing.assert_array_equal(many[name].differences, one.differences)
        assert many[name].to_dict() == one.to_dict()


def test_paired_bootstrap_rejects_mismatched_shapes() -> None:
    scores, targets = _tied(0)
    with pytest.raises(ValueError, match="shape"):
        paired_bootstrap(scores, [scores, scores[:-1]], targets)
    with pytest.raises(ValueError, match="confidence"):
        paired_bootstrap(scores, scores, targets, confidence=95)


def test_seed_summary() -> None:
    mean, std, n = seed_summary([0.8, 0.82, None, 0.83])
    assert n == 3 and mean == pytest.approx(np.mean([0.8, 0.82, 0.83]))
    assert std == pytest.approx(np.std([0.8, 0.82, 0.83], ddof=1))
    mean, std, n = seed_summary([0.7])
    assert (mean, n) == (0.7, 1) and math.isnan(std)
    assert seed_summary([])[2] == 0


# -- decision metrics (global or per-class thresholds) --------------------------------------
@pytest.mark.parametrize("seed", range(4))
def test_decision_metrics_match_sklearn(seed):
    from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score

    from mlc.metrics import decision_metrics

    rng = np.random.default_rng(seed)
    targets = (rng.random((120, 7)) < 0.3).astype(np.int8)
    scores = np.clip(0.4 * targets + rng.random((120, 7)) * 0.7, 0, 1)
    scores[:, 6] = 0.0  # a class never predicted
    for thresholds in (0.5, rng.uniform(0.2, 0.8, 7)):
        pred = (scores >= np.asarray(thresholds)).astype(int)
        d = decision_metrics(scores, targets, thresholds)
        assert d.of1 == pytest.approx(f1_score(targets, pred, average="micro", zero_division=0))
        assert d.macro_f1 == pytest.approx(f1_score(targets, pred, average="macro", zero_division=0))
        assert d.exact_match == pytest.approx(accuracy_score(targets, pred))
        cp = precision_score(targets, pred, average="macro", zero_division=0)
        cr = recall_score(targets, pred, average="macro", zero_division=0)
        assert (d.cp, d.cr) == (pytest.approx(cp), pytest.approx(cr))
        assert d.cf1 == pytest.approx(2 * cp * cr / (cp + cr))  # ML-GCN's CF1: F1 of the averages
        assert d.thresholds == ("0.5" if np.ndim(thresholds) == 0 else "per-class") and d.num_images == 120


def test_decision_metrics_by_hand_and_bad_thresholds():
    from mlc.metrics import decision_metrics

    scores = np.array([[0.9, 0.2], [0.4, 0.6], [0.3, 0.1]])
    targets = np.array([[1, 0], [1, 1], [0, -1]])
    # at 0.5: rows right: 1 (yes), 2 (class 0 missed), 3 (yes; the ignored entry does not count)
    assert decision_metrics(scores, targets).exact_match == pytest.approx(2 / 3)
    # per class 0.35 / 0.5: all three rows right
    assert decision_metrics(scores, targets, [0.35, 0.5]).exact_match == 1.0
    with pytest.raises(ValueError, match="one per class"):
        decision_metrics(scores, targets, [0.5, 0.5, 0.5])


def test_seed_interval_is_students_t_over_seeds() -> None:
    # mean 0.2, sample std 0.1, n 3: half-width t(0.975, 2) * 0.1 / sqrt(3) = 4.302653 * 0.057735 = 0.248414
    low, high = seed_interval([0.1, 0.2, None, 0.3])
    assert low == pytest.approx(0.2 - 0.248414, abs=1e-6) and high == pytest.approx(0.2 + 0.248414, abs=1e-6)
    assert all(math.isnan(x) for x in seed_interval([0.7]))
