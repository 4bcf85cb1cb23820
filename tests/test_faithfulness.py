"""Deletion and insertion (Petsiuk et al. 2018) against curves worked out by hand."""
import numpy as np
import pytest
import torch

from mlc.faithfulness import (
    FRACTIONS, area_under_curve, blur, pair_curves, perturbed, pixel_order, sample_present_pairs, summarize,
)


def _region_model():
    """An image of ones, a region R (the top-left 5 x 5 of 10 x 10: 25% of the pixels) the score
    is the mean of, and a map that ranks R first (R last when negated)."""
    image = torch.ones(3, 10, 10)
    region = torch.zeros(10, 10, dtype=torch.bool)
    region[:5, :5] = True

    def score(batch: torch.Tensor) -> torch.Tensor:
        return batch[:, 0][:, region].mean(dim=1)

    return image, region.numpy().astype(np.float32), score


def test_deleting_the_region_the_score_reads_first_gives_the_hand_computed_curve():
    image, cam, score = _region_model()
    curves = pair_curves(score, image, {"region first": cam, "region last": 1 - cam}, np.random.default_rng(0),
                         baseline=torch.zeros_like(image))
    # k = 0, 10, 30, 50, 70, 90, 100 pixels removed; R (25 px) goes first: 1 - min(k, 25) / 25
    np.testing.assert_allclose(curves["region first"]["deletion"], [1, 0.6, 0, 0, 0, 0, 0], atol=1e-6)
    np.testing.assert_allclose(curves["region first"]["insertion"], [0, 0.4, 1, 1, 1, 1, 1], atol=1e-6)
    # R last: its pixels go after the other 75
    np.testing.assert_allclose(curves["region last"]["deletion"], [1, 1, 1, 1, 1, 0.4, 0], atol=1e-6)
    np.testing.assert_allclose(curves["region last"]["insertion"], [0, 0, 0, 0, 0, 0.6, 1], atol=1e-6)
    # trapezoids: 0.1 (1 + 0.6) / 2 + 0.2 (0.6 + 0) / 2 = 0.14, and so on
    assert area_under_curve(curves["region first"]["deletion"]) == pytest.approx(0.14)
    assert area_under_curve(curves["region first"]["insertion"]) == pytest.approx(0.86)
    assert area_under_curve(curves["region last"]["deletion"]) == pytest.approx(0.86)
    assert area_under_curve(curves["region last"]["insertion"]) == pytest.approx(0.14)


def test_deletion_ends_where_insertion_starts():
    torch.manual_seed(0)
    image, blurred = torch.rand(3, 8, 8), torch.rand(3, 8, 8)
    order = pixel_order(np.random.rand(2, 2), (8, 8), np.random.default_rng(0))
    deletion = perturbed(image, blurred, order, FRACTIONS, "deletion")
    insertion = perturbed(image, blurred, order, FRACTIONS, "insertion")
    torch.testing.assert_close(deletion[0], image)
    torch.testing.assert_close(deletion[-1], blurred)
    torch.testing.assert_close(insertion[0], blurred)
    torch.testing.assert_close(insertion[-1], image)
    torch.testing.assert_close(deletion[2] + insertion[2], image + blurred)  # complementary masks


def test_pixel_order_follows_the_map_and_breaks_ties_at_random():
    cam = np.array([[0.0, 2.0], [1.0, 0.0]], np.float32)
    order = pixel_order(cam, (2, 2), np.random.default_rng(0))
    assert list(order[:2]) == [1, 2] and set(order[2:]) == {0, 3}
    tails = {tuple(pixel_order(cam, (2, 2), np.random.default_rng(s))[2:]) for s in range(20)}
    assert tails == {(0, 3), (3, 0)}


def test_blur_keeps_a_constant_image_and_smooths_an_edge():
    flat = torch.full((1, 3, 64, 64), 0.7)
    torch.testing.assert_close(blur(flat, 10.0), flat)
    edge = torch.zeros(1, 3, 64, 64)
    edge[..., 32:] = 1.0
    out = blur(edge, 10.0)
    assert 0.3 < float(out[0, 0, 10, 31]) < 0.5 < float(out[0, 0, 10, 32]) < 0.7


def test_summary_gives_intervals_and_paired_wins():
    aucs = {"own": {"deletion": [0.1, 0.2, 0.3, 0.2], "insertion": [0.9, 0.8, 0.7, 0.6]},
            "random": {"deletion": [0.5, 0.5, 0.1, 0.5], "insertion": [0.5, 0.5, 0.8, 0.5]},
            "centre": {"deletion": [0.0, 0.5, 0.5, 0.5], "insertion": [0.5, 0.5, 0.5, 0.9]}}
    curves = {k: {c: [np.zeros(7)] * 4 for c in ("deletion", "insertion")} for k in aucs}
    maps, beats = summarize(aucs, curves, {"own": "CAM", "random": "random", "centre": "centre"}, ["own"], seed=0)
    assert maps["own"].deletion.auc.value == pytest.approx(0.2)
    assert maps["own"].deletion.auc.low <= 0.2 <= maps["own"].deletion.auc.high
    assert beats["own"]["deletion"]["random"].value == 0.75  # lower deletion AUC wins
    assert beats["own"]["deletion"]["centre"].value == 0.75
    assert beats["own"]["insertion"]["random"].value == 0.75  # higher insertion AUC wins
    assert beats["own"]["insertion"]["centre"].value == 0.75


def test_present_pairs_are_a_seeded_subset():
    labels = np.array([[1, 0, 1], [0, 1, 0], [1, 1, 1], [0, 0, 0]])
    assert sample_present_pairs(labels, 10) == [(0, 0), (0, 2), (1, 1), (2, 0), (2, 1), (2, 2)]
    a, b = sample_present_pairs(labels, 3, seed=4), sample_present_pairs(labels, 3, seed=4)
    assert a == b and len(a) == 3 and all(labels[i, c] == 1 for i, c in a) and a == sorted(a)


def test_blur_equals_torchvision_gaussian_blur():
    from torchvision.transforms.functional import gaussian_blur

    torch.manual_seed(0)
    x = torch.rand(2, 3, 96, 80)
    torch.testing.assert_close(blur(x, 10.0), gaussian_blur(x, [61, 61], [10.0, 10.0]), atol=1e-5, rtol=0)
