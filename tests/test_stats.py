"""Tests for mlc.stats: counts and co-occurrence on a hand-written label matrix."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mlc.stats import LabelStatistics, label_statistics

CLASSES = ["a", "b", "c"]
# rows are images; -1 = only difficult objects
LABELS = np.array(
    [
        [1, 0, -1],
        [1, 1, 0],
        [0, 1, 1],
        [1, -1, 1],
        [0, 0, 0],
    ],
    dtype=np.int8,
)


def test_difficult_as_positive() -> None:
    s = label_statistics(LABELS, CLASSES)
    # positives: a in rows 0,1,3; b in 1,2,3; c in 0,2,3
    assert s.num_images == 5
    np.testing.assert_array_equal(s.counts, [3, 3, 3])
    # ab: rows 1,3; ac: rows 0,3; bc: rows 2,3
    np.testing.assert_array_equal(s.cooccurrence, [[3, 2, 2], [2, 3, 2], [2, 2, 3]])


def test_difficult_ignored() -> None:
    s = label_statistics(LABELS, CLASSES, difficult_as_positive=False)
    # positives: a in rows 0,1,3; b in 1,2; c in 2,3
    np.testing.assert_array_equal(s.counts, [3, 2, 2])
    # ab: row 1; ac: row 3; bc: row 2
    np.testing.assert_array_equal(s.cooccurrence, [[3, 1, 1], [1, 2, 1], [1, 1, 2]])
    np.testing.assert_array_equal(np.diag(s.cooccurrence), s.counts)


def test_dict_round_trip_through_json() -> None:
    s = label_statistics(LABELS, CLASSES)
    back = LabelStatistics.from_dict(json.loads(json.dumps(s.to_dict())))
    assert back.classes == CLASSES and back.num_images == 5
    np.testing.assert_array_equal(back.counts, s.counts)
    np.testing.assert_array_equal(back.cooccurrence, s.cooccurrence)


def test_bad_input() -> None:
    with pytest.raises(ValueError, match="shape"):
        label_statistics(LABELS, ["a", "b"])
    with pytest.raises(ValueError, match="-1"):
        label_statistics(np.array([[2, 0, 0]]), CLASSES)
    with pytest.raises(ValueError, match="cooccurrence"):
        LabelStatistics.from_dict({"classes": CLASSES, "num_images": 1, "counts": [1, 1, 1]})
