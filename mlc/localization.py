"""Do the maps point at the objects? Pointing game and box energy against annotated boxes.

For one positive (image, class) pair, the method's map (at feature resolution) is brought onto the
image with ``mlc.explain.map_to_image`` (the function the app's overlays use) and scored against
the boxes of that class:

- **pointing game** (Zhang et al. 2016, "Top-down neural attention by excitation backprop"): a
  hit when the map's maximum lies within ``tolerance`` pixels of a box of the class. The maximum is
  the centre of the highest cell of the map's own grid (``peak``: no side favoured, ties drawn
  at random with a seed). Zhang et al.
  allow 15 px on VOC's ~500 px images; here the tolerance is a share of the image's longer side
  (``POINTING_TOLERANCE`` = 3%, 15 px at 500 px), so it means the same at any resolution.
- **box energy** (the "energy-based pointing game" of Score-CAM): the share of the map's positive
  part that falls inside the union of the class's boxes. A map without positive part has none (nan).

Maps are scored as a visitor is shown them: the positive evidence (``mlc.explain.positive_evidence``).
A map with no positive cell is **empty** (e.g. the CAM of a class the image gives no evidence for):
it has nothing to point with, so the pointing game counts it as a **miss** rather than scoring
the least negative cell, and the tally reports how many pairs were empty (``empty_pairs``);
its box energy is undefined (nan), as before.

Two maps that know nothing give the scale: a **random** map (uniform noise on the feature grid,
seeded) and a **centre** map (a Gaussian at the image centre, sigma a quarter of each side, the
photographer's prior). A method's figure means something only against these.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from mlc.data.base import BoxAnnotation, ObjectBox
from mlc.explain import map_to_image

POINTING_TOLERANCE = 0.03  # share of the image's longer side (Zhang et al.: 15 px on ~500 px)
BASELINE_MAPS = ("random", "centre")


def boxes_on_image(annotation: BoxAnnotation, class_index: int, size: tuple[int, int]) -> list[ObjectBox]:
    """The class's boxes in the pixels of an image of ``size`` = (height, width): annotations made
    on another size of the same photo (e.g. a resized copy) are rescaled."""
    boxes = annotation.of_class(class_index)
    if annotation.size is None or tuple(annotation.size) == tuple(size):
        return boxes
    sy, sx = size[0] / annotation.size[0], size[1] / annotation.size[1]
    return [ObjectBox(b.class_index, b.x0 * sx, b.y0 * sy, b.x1 * sx, b.y1 * sy) for b in boxes]


def box_mask(boxes: Sequence[ObjectBox], size: tuple[int, int]) -> np.ndarray:
    """(height, width) bool mask of the pixels whose centres lie inside any of the boxes."""
    height, width = size
    mask = np.zeros((height, width), dtype=bool)
    for b in boxes:
        x0, x1 = max(0, math.ceil(b.x0 - 0.5)), min(width, math.ceil(b.x1 - 0.5))
        y0, y1 = max(0, math.ceil(b.y0 - 0.5)), min(height, math.ceil(b.y1 - 0.5))
        mask[y0:y1, x0:x1] = True
    return mask


def peak(cam: np.ndarray, size: tuple[int, int] | None = None,
         rng: np.random.Generator | None = None) -> tuple[float, float]:
    """(x, y) image pixels of the centre of the map's highest cell, for an image of ``size`` =
    (height, width) (default: the map's own grid, one cell a pixel).

    Taken on the map's own grid, not on its upsampled copy: upsampling clamps at the edges, so a
    border cell's plateau runs to the image edge and a first-argmax peak landed on the top or left
    edge but never on the bottom or right one. The cell centre favours no side; tied cells are
    drawn at random (``rng``, seeded; default seed 0), so no position wins ties by its index.
    """
    cam = np.asarray(cam)
    h, w = cam.shape
    height, width = (h, w) if size is None else (int(size[0]), int(size[1]))
    flat = cam.ravel()
    top = np.flatnonzero(flat == flat.max())
    k = int(top[0]) if len(top) == 1 else int((rng or np.random.default_rng(0)).choice(top))
    y, x = divmod(k, w)
    return (x + 0.5) * width / w, (y + 0.5) * height / h


def pointing_hit(cam: np.ndarray, boxes: Sequence[ObjectBox], tolerance: float, size: tuple[int, int] | None = None,
                 rng: np.random.Generator | None = None) -> bool:
    """Whether the map's peak (``peak``) on an image of ``size`` is within ``tolerance`` px (Euclidean) of a box."""
    x, y = peak(cam, size, rng)
    for b in boxes:
        dx = max(b.x0 - x, 0.0, x - b.x1)
        dy = max(b.y0 - y, 0.0, y - b.y1)
        if math.hypot(dx, dy) <= tolerance:
            return True
    return False


def box_energy(heat: np.ndarray, mask: np.ndarray) -> float:
    """Share of the map's positive part inside ``mask``; nan when the map has no positive part."""
    positive = np.clip(heat, 0.0, None)
    total = float(positive.sum(dtype=np.float64))
    return float(positive[mask].sum(dtype=np.float64)) / total if total > 0 else float("nan")


def centre_map(shape: tuple[int, int]) -> np.ndarray:
    """A Gaussian at the centre of a (h, w) grid, sigma a quarter of each side."""
    h, w = shape
    ys = (np.arange(h) + 0.5) / h - 0.5
    xs = (np.arange(w) + 0.5) / w - 0.5
    return np.exp(-(ys[:, None] ** 2 + xs[None, :] ** 2) / (2 * 0.25**2)).astype(np.float32)


def random_map(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Uniform noise on a (h, w) grid: a map that knows nothing about the image."""
    return rng.random(shape, dtype=np.float32)


@dataclass(frozen=True)
class MapScore:
    """One map scored against the boxes of its class: an empty map is a miss without energy."""

    hit: bool
    energy: float
    empty: bool = False


def score_map(cam: np.ndarray, annotation: BoxAnnotation, class_index: int, size: tuple[int, int],
              tolerance: float = POINTING_TOLERANCE, rng: np.random.Generator | None = None) -> MapScore:
    """Pointing hit and box energy of one feature-resolution map for one class of an image of ``size``
    (``rng`` draws among tied peak cells)."""
    cam = np.asarray(cam, dtype=np.float32)
    if not (cam > 0).any():  # no positive evidence: nothing to point with
        return MapScore(hit=False, energy=float("nan"), empty=True)
    heat = map_to_image(cam, size)
    boxes = boxes_on_image(annotation, class_index, size)
    hit = pointing_hit(cam, boxes, tolerance * max(size), size, rng)
    return MapScore(hit, box_energy(heat, box_mask(boxes, size)))


class LocalizationTally:
    """Hits and energies per (map source, class), accumulated over positive pairs."""

    def __init__(self, num_classes: int):
        self.num_classes = num_classes
        self.hits: dict[str, list[list[bool]]] = {}
        self.energy: dict[str, list[list[float]]] = {}
        self.empty: dict[str, int] = {}

    def add(self, source: str, class_index: int, hit: bool, energy: float, empty: bool = False) -> None:
        self.hits.setdefault(source, [[] for _ in range(self.num_classes)])[class_index].append(bool(hit))
        self.energy.setdefault(source, [[] for _ in range(self.num_classes)])[class_index].append(float(energy))
        self.empty[source] = self.empty.get(source, 0) + bool(empty)

    def add_score(self, source: str, class_index: int, score: MapScore) -> None:
        self.add(source, class_index, score.hit, score.energy, score.empty)

    def summary(self, source: str) -> dict:
        """Pointing accuracy and mean box energy per class (null without pairs), their mean over
        classes (as Zhang et al. report) and over all pairs, and the pair counts (``empty_pairs``:
        maps without positive evidence, counted as misses)."""
        hits, energy = self.hits.get(source), self.energy.get(source)
        if hits is None:
            return {}
        pointing = [float(np.mean(h)) if h else None for h in hits]
        energies = [float(np.nanmean(e)) if e and not np.all(np.isnan(e)) else None for e in energy]
        flat_hits = [x for h in hits for x in h]
        flat_energy = [x for e in energy for x in e if not math.isnan(x)]
        return {
            "pointing": _mean([p for p in pointing if p is not None]),
            "energy": _mean([e for e in energies if e is not None]),
            "pointing_all_pairs": _mean(flat_hits),
            "energy_all_pairs": _mean(flat_energy),
            "pairs": len(flat_hits),
            "pairs_without_energy": sum(1 for e in energy for x in e if math.isnan(x)),
            "empty_pairs": self.empty.get(source, 0),
            "per_class": {"pointing": pointing, "energy": energies, "pairs": [len(h) for h in hits]},
        }


def _mean(values: Sequence[float]) -> float | None:
    return float(np.mean(values)) if len(values) else None
