"""Pointing game, box energy and the map-to-image mapping they share with the app's overlays."""
import math

import numpy as np
import pytest
import torch
from PIL import Image

import mlc.explain
import mlc.localization
from mlc.data.base import BoxAnnotation, ObjectBox
from mlc.data.transforms import build_transforms
from mlc.explain import map_to_image
from mlc.localization import (
    LocalizationTally, box_energy, box_mask, boxes_on_image, centre_map, peak, pointing_hit, random_map, score_map,
)


def test_peak_inside_a_box_scores_one_and_outside_zero():
    heat = np.zeros((60, 100), np.float32)
    box = ObjectBox(0, 10, 5, 30, 25)  # x in [10, 30), y in [5, 25)
    heat[15, 20] = 1.0
    assert peak(heat) == (20.5, 15.5)
    assert pointing_hit(heat, [box], tolerance=0) is True
    heat[:] = 0
    heat[50, 80] = 1.0  # 50 px right of the box, 25 below
    assert pointing_hit(heat, [box], tolerance=15) is False
    assert pointing_hit(heat, [box, ObjectBox(0, 70, 40, 90, 60)], tolerance=0) is True  # any box of the class


def test_pointing_tolerance_is_a_euclidean_distance_to_the_box():
    box = ObjectBox(0, 10, 10, 20, 20)
    heat = np.zeros((60, 60), np.float32)
    heat[27, 27] = 1.0  # centre (27.5, 27.5): 7.5 px right and below the corner -> 10.6 px away
    assert pointing_hit(heat, [box], tolerance=10.0) is False
    assert pointing_hit(heat, [box], tolerance=10.7) is True


def test_energy_of_a_uniform_map_is_the_box_area_share():
    size = (60, 100)
    box = ObjectBox(0, 10, 5, 30, 25)
    mask = box_mask([box], size)
    assert mask.sum() == 20 * 20
    assert box_energy(np.ones(size, np.float32), mask) == pytest.approx(400 / 6000)
    # two overlapping boxes count their union once
    assert box_mask([box, ObjectBox(0, 20, 5, 40, 25)], size).sum() == 30 * 20


def test_energy_counts_only_the_positive_part_and_is_nan_without_one():
    size = (10, 10)
    mask = box_mask([ObjectBox(0, 0, 0, 5, 10)], size)
    heat = np.full(size, -1.0, np.float32)
    assert math.isnan(box_energy(heat, mask))
    heat[:, :5] = 2.0  # positive inside, negative outside
    assert box_energy(heat, mask) == pytest.approx(1.0)
    heat[:, 5:] = 2.0
    assert box_energy(heat, mask) == pytest.approx(0.5)


def test_boxes_of_a_resized_copy_are_rescaled():
    annotation = BoxAnnotation((ObjectBox(3, 50, 20, 150, 80), ObjectBox(1, 0, 0, 10, 10)), size=(100, 200))
    (box,) = boxes_on_image(annotation, 3, (50, 100))
    assert (box.x0, box.y0, box.x1, box.y1) == (25, 10, 75, 40)
    assert boxes_on_image(annotation, 3, (100, 200))[0] == annotation.boxes[0]


def test_a_map_built_from_a_box_comes_back_onto_the_box_of_a_non_square_image():
    # The model sees the image squashed to 224 x 224; a stride-32 network's 7 x 7 map of the box
    # must come back onto the box once mapped to the 280 x 140 image with the app's function.
    width, height = 280, 140
    box = ObjectBox(0, 80, 40, 200, 100)
    mask = box_mask([box], (height, width))
    pixels = np.zeros((height, width, 3), np.uint8)
    pixels[mask] = 255
    resized = build_transforms(224, train=False, mean=(0, 0, 0), std=(1, 1, 1))(Image.fromarray(pixels))
    cam = torch.nn.functional.avg_pool2d(resized[:1][None], 32)[0, 0].numpy()  # (7, 7), what the network sees
    assert cam.shape == (7, 7)
    heat = map_to_image(cam, (height, width))
    assert heat.shape == (height, width)
    inside = heat >= 0.5
    iou = (inside & mask).sum() / (inside | mask).sum()
    assert iou > 0.95
    assert score_map(cam, BoxAnnotation((box,), (height, width)), 0, (height, width), tolerance=0.0).hit is True
    score = score_map(cam, BoxAnnotation((box,)), 0, (height, width), tolerance=0.0)
    assert score.hit and score.energy > 0.8 and not score.empty
    # a mapping that kept the map square (aspect ratio of the input, not of the image) misses the box
    square = map_to_image(cam, (width, width))[:height] >= 0.5
    assert (square & mask).sum() / (square | mask).sum() < 0.5


def test_the_app_and_the_localisation_share_one_mapping(monkeypatch):
    assert mlc.localization.map_to_image is mlc.explain.map_to_image
    calls = []
    monkeypatch.setattr(mlc.explain, "map_to_image", lambda cam, size: calls.append(size) or np.zeros(size, np.float32))
    mlc.explain.overlay(np.zeros((30, 50, 3), np.uint8), np.ones((7, 7), np.float32))
    assert calls == [(30, 50)]


def test_baseline_maps():
    centre = centre_map((7, 9))
    assert np.unravel_index(np.argmax(centre), centre.shape) == (3, 4)
    assert np.allclose(centre, centre[::-1, ::-1])
    a, b = random_map((7, 7), np.random.default_rng(1)), random_map((7, 7), np.random.default_rng(1))
    assert np.array_equal(a, b) and 0 <= a.min() and a.max() < 1


def test_tally_gives_per_class_and_mean_over_classes():
    tally = LocalizationTally(3)
    for hit, energy in ((True, 0.5), (False, 0.1), (True, float("nan"))):
        tally.add("method", 0, hit, energy)
    tally.add("method", 2, False, 0.4)
    s = tally.summary("method")
    assert s["per_class"]["pointing"] == [pytest.approx(2 / 3), None, 0.0]
    assert s["per_class"]["energy"] == [pytest.approx(0.3), None, pytest.approx(0.4)]
    assert s["per_class"]["pairs"] == [3, 0, 1]
    assert s["pointing"] == pytest.approx(1 / 3)  # mean over the classes with pairs
    assert s["pointing_all_pairs"] == pytest.approx(0.5)
    assert s["energy"] == pytest.approx(0.35)
    assert s["pairs"] == 4 and s["pairs_without_energy"] == 1
    assert tally.summary("random") == {}


def test_a_map_without_positive_evidence_is_an_empty_miss():
    """Its least negative cell is no evidence: a miss, counted as empty (it scored a hit before)."""
    box = ObjectBox(0, 0, 0, 20, 20)
    cam = -np.ones((7, 7), np.float32)
    cam[0, 0] = -0.5  # the least negative cell lies on the box
    score = score_map(cam, BoxAnnotation((box,), (224, 224)), 0, (224, 224))
    assert score.empty and score.hit is False and math.isnan(score.energy)
    cam[0, 0] = 0.5
    score = score_map(cam, BoxAnnotation((box,), (224, 224)), 0, (224, 224))
    assert score.hit and not score.empty
    tally = LocalizationTally(1)
    tally.add_score("method", 0, score_map(-np.ones((7, 7), np.float32), BoxAnnotation((box,)), 0, (224, 224)))
    tally.add_score("method", 0, score)
    s = tally.summary("method")
    assert s["empty_pairs"] == 1 and s["pairs"] == 2 and s["pointing"] == 0.5


def _corner_box(cell: tuple[int, int], size: tuple[int, int], grid: int = 7) -> ObjectBox:
    """A small box around the centre of one grid cell of an image of ``size``."""
    cy, cx = (cell[0] + 0.5) * size[0] / grid, (cell[1] + 0.5) * size[1] / grid
    return ObjectBox(0, cx - 3, cy - 3, cx + 3, cy + 3)


@pytest.mark.parametrize("cell", [(0, 0), (6, 6), (0, 6), (6, 0)])
def test_a_peak_in_a_corner_cell_points_at_that_cell_whatever_the_corner(cell):
    """The pointing game's peak was taken on the edge-clamped upsampled map with the first argmax:
    a top-left peak cell landed on the image corner (a miss here), a bottom-right one on its centre."""
    size = (224, 224)
    cam = np.full((7, 7), 0.5, np.float32)
    cam[cell] = 1.0
    assert peak(cam, size) == ((cell[1] + 0.5) * 32, (cell[0] + 0.5) * 32)
    box = _corner_box(cell, size)
    score = score_map(cam, BoxAnnotation((box,), size), 0, size, tolerance=0.0)
    assert score.hit


def test_mirrored_maps_give_mirrored_peaks():
    rng = np.random.default_rng(0)
    height, width = 140, 280
    for _ in range(20):
        cam = rng.random((7, 7)).astype(np.float32)
        x, y = peak(cam, (height, width))
        assert peak(cam[:, ::-1], (height, width)) == pytest.approx((width - x, y))
        assert peak(cam[::-1, :], (height, width)) == pytest.approx((x, height - y))


def test_tied_peaks_are_drawn_at_random_with_a_seed():
    cam = np.zeros((2, 2), np.float32) + 1.0  # four tied cells
    drawn = {peak(cam, (64, 64), np.random.default_rng(s)) for s in range(40)}
    assert drawn == {(16.0, 16.0), (48.0, 16.0), (16.0, 48.0), (48.0, 48.0)}
    assert peak(cam, (64, 64), np.random.default_rng(3)) == peak(cam, (64, 64), np.random.default_rng(3))
