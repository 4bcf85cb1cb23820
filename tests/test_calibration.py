"""Per-class thresholds and the out-of-distribution rule (mlc.calibration), against hand-computed values
and scikit-learn."""
import json

import numpy as np
import pytest
from sklearn.metrics import f1_score, precision_recall_curve

from mlc.calibration import (
    CALIBRATION_VERSION, Calibration, CalibrationError, calibrate, f1_thresholds, joint_energy_score,
    majority_flag, ood_threshold,
)


def _column(scores, labels):
    return np.asarray(scores, dtype=np.float64)[:, None], np.asarray(labels)[:, None]


def test_threshold_by_hand():
    # scores 0.9 0.8 0.7 0.6 0.3 0.2 with labels 1 0 1 1 0 1 (4 positives):
    # t=0.9: 2*1/(1+4)=0.4; 0.8: 2/6; 0.7: 4/7; 0.6: 6/8=0.75; 0.3: 6/9; 0.2: 8/10=0.8 -> 0.2
    s, t = _column([0.9, 0.8, 0.7, 0.6, 0.3, 0.2], [1, 0, 1, 1, 0, 1])
    assert f1_thresholds(s, t, min_positives=1).tolist() == [0.2]


def test_ties_go_towards_half():
    # 2 positives. t=0.95: 2*1/(1+2)=2/3; 0.6: 2/4; 0.55: 2/5; 0.3: 2*2/(4+2)=2/3; 0.1: 4/7; and 0.5
    # predicts the top three: 2/5. Best 2/3 at 0.95 and at 0.3: the one nearer 0.5 is 0.3
    s, t = _column([0.95, 0.6, 0.55, 0.3, 0.1], [1, 0, 0, 1, 0])
    assert f1_thresholds(s, t, min_positives=1).tolist() == [0.3]
    # 0.5 predicts the same as 0.9 here (F1 1, the best), so 0.5 is kept
    s, t = _column([0.9, 0.45, 0.2], [1, 0, 0])
    assert f1_thresholds(s, t, min_positives=1).tolist() == [0.5]
    # 0.5 as good as the best although a different set is predicted: 0.5 kept (t=0.9: 2/3; t=0.5: 2*2/(4+2)=2/3)
    s, t = _column([0.9, 0.7, 0.6, 0.55, 0.2], [1, 0, 0, 1, 0])
    assert f1_thresholds(s, t, min_positives=1).tolist() == [0.5]


def test_tie_groups_are_one_candidate():
    # the two 0.4s are predicted together: t=0.4 gives tp=2 of 3 predicted, F1 2*2/(3+2)=0.8 (never
    # the 1.0 of "the positive 0.4 alone"); t=0.9 and t=0.5 give 2/3
    s, t = _column([0.9, 0.4, 0.4, 0.1], [1, 0, 1, 0])
    s2, t2 = _column([0.9, 0.4, 0.4, 0.1], [1, 1, 0, 0])  # same multiset, other order in the input
    assert f1_thresholds(s, t, min_positives=1).tolist() == [0.4]
    assert f1_thresholds(s2, t2, min_positives=1).tolist() == [0.4]


def test_few_positives_keep_half_and_ignored_entries_do_not_count():
    s, t = _column([0.9, 0.2, 0.1], [1, 0, 0])
    assert f1_thresholds(s, t).tolist() == [0.5]  # 1 positive < 10
    s = np.array([[0.9], [0.3], [0.2]])
    t = np.array([[1], [-1], [1]])  # the ignored 0.3 is neither predicted nor missed
    assert f1_thresholds(s, t, min_positives=1).tolist() == [0.2]


@pytest.mark.parametrize("seed", range(5))
def test_best_f1_equals_sklearn_precision_recall_curve(seed):
    rng = np.random.default_rng(seed)
    n, c = 200, 6
    targets = (rng.random((n, c)) < rng.uniform(0.05, 0.5, c)).astype(np.int8)
    scores = np.clip(0.35 * targets + rng.random((n, c)) * 0.7, 0, 1).round(2)  # rounding makes ties
    thresholds = f1_thresholds(scores, targets, min_positives=1)
    for j in range(c):
        precision, recall, _ = precision_recall_curve(targets[:, j], scores[:, j])
        with np.errstate(invalid="ignore", divide="ignore"):
            best = np.nanmax(np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0))
        ours = f1_score(targets[:, j], scores[:, j] >= thresholds[j])
        assert ours == pytest.approx(best, abs=1e-12)
        # no candidate nearer 0.5 reaches the same F1
        for cand in np.unique(np.append(scores[:, j], 0.5)):
            if abs(cand - 0.5) < abs(thresholds[j] - 0.5):
                assert f1_score(targets[:, j], scores[:, j] >= cand) < best - 1e-12


def test_bad_input_is_one_line_error():
    with pytest.raises(CalibrationError, match="2-D"):
        f1_thresholds(np.zeros(3), np.zeros(3))
    with pytest.raises(CalibrationError, match="does not match"):
        f1_thresholds(np.zeros((3, 2)), np.zeros((3, 1)))
    with pytest.raises(CalibrationError, match="NaN"):
        f1_thresholds(np.full((2, 1), np.nan), np.zeros((2, 1)))
    with pytest.raises(CalibrationError, match="1, 0 or -1"):
        f1_thresholds(np.zeros((2, 1)), np.full((2, 1), 2))


def test_joint_energy_is_stable_and_higher_for_unusual_images():
    logits = np.array([[8.0, -6.0, 5.0], [-7.0, -8.0, -6.0], [1000.0, -1000.0, 0.0]])
    score = joint_energy_score(logits)
    assert score[0] < score[1]  # confident labels: more in-distribution than no label at all
    expected = -(np.log1p(np.exp(8.0)) + np.log1p(np.exp(-6.0)) + np.log1p(np.exp(5.0)))
    assert score[0] == pytest.approx(expected)
    assert score[2] == pytest.approx(-(1000.0 + np.log(2.0)))  # no overflow


def test_ood_threshold_flags_at_most_the_rate():
    v = np.arange(100, dtype=float)  # flagged: score > t
    t = ood_threshold(v, 0.05)
    assert t == 94.0 and (v > t).sum() == 5
    rng = np.random.default_rng(0)
    for n in (7, 19, 250, 1001):
        v = rng.normal(size=n)
        t = ood_threshold(v, 0.05)
        assert (v > t).sum() <= 0.05 * n and (v >= t).sum() > 0.05 * n - 1
    assert (np.ones(10) > ood_threshold(np.ones(10))).sum() == 0  # ties: never more than the rate


def test_majority():
    assert majority_flag([True, True, True, False, False])
    assert not majority_flag([True, True, False, False, False])
    assert not majority_flag([True, False]) and not majority_flag([])


def _calibration(rng=None) -> Calibration:
    rng = rng or np.random.default_rng(0)
    targets = (rng.random((250, 3)) < [0.3, 0.02, 0.5]).astype(np.int8)
    logits = rng.normal(size=(250, 3)) + 3 * targets
    probs = 1 / (1 + np.exp(-logits))
    return calibrate(probs, logits, targets, ["cat", "dog", "bus"], note="test")


def test_calibration_round_trip_and_fields():
    cal = _calibration()
    assert cal.selection_size == 250 and cal.version == CALIBRATION_VERSION and cal.ood_score == "joint_energy"
    assert cal.positives[1] < 10 and cal.thresholds[1] == 0.5 and cal.tuned == [True, False, True]
    assert cal.extra == {"note": "test"}
    again = Calibration.from_dict(json.loads(json.dumps(cal.to_dict())))
    assert again == cal
    logits = np.random.default_rng(1).normal(size=(250, 3))
    assert cal.ood_flags(logits).dtype == bool
    assert cal.predict(np.full((2, 3), 0.5)).shape == (2, 3)


def test_calibration_flags_at_most_5_percent_of_its_own_split():
    rng = np.random.default_rng(3)
    targets = (rng.random((250, 4)) < 0.3).astype(np.int8)
    logits = rng.normal(size=(250, 4)) + 3 * targets
    cal = calibrate(1 / (1 + np.exp(-logits)), logits, targets, list("abcd"))
    assert cal.ood_flags(logits).sum() <= 12


@pytest.mark.parametrize("change, message", [
    ({"version": 99}, "version 99"),
    ({"thresholds": [0.5]}, "1 thresholds"),
    ({"thresholds": [0.5, 2.0, 0.5]}, "probabilities"),
    ({"ood_score": "magic"}, "magic"),
    ({"colour": "red"}, "unknown fields"),
])
def test_bad_stored_calibration_is_refused(change, message):
    data = {**_calibration().to_dict(), **change}
    with pytest.raises(CalibrationError, match=message):
        Calibration.from_dict(data)
    with pytest.raises(CalibrationError, match="JSON object"):
        Calibration.from_dict([1, 2])
