"""Do the maps matter to the model? Deletion and insertion (Petsiuk et al. 2018, RISE).

A map is *faithful* when the pixels it ranks first are the ones the model's score depends on:

- **deletion**: the class probability as the most relevant pixels (by the map, upsampled to the
  input as the app draws it, ``mlc.explain.map_to_image``) are replaced by a blurred copy of the
  image; a faithful map makes it fall fast, so a **lower** area under the curve is better;
- **insertion**: the probability as those pixels are revealed from the blurred image; a faithful
  map makes it rise fast, so a **higher** area is better.

Blur, not black: a Gaussian of ``BLUR_SIGMA_PX`` (10 px) at the resolution the model sees, as
Petsiuk et al. do for insertion, so the removed pixels carry no sharp edge of their own. The curve
is read at ``FRACTIONS`` of the pixels (0, 10, 30, 50, 70, 90, 100%) and its area taken by the
trapezoid rule over [0, 1]. Tied pixels (e.g. the zeros of a ReLU'd CAM) are ordered at random
with a seed, so a map with no evidence somewhere says nothing about the order there.

The method's maps are read from ``mlc.explain.explanations`` (its own map and Grad-CAM); beside them
the pointing game's two reference maps (``mlc.localization``: a seeded ``random`` map and the
``centre`` Gaussian) give the scale. On a seeded subset of present (image, class) pairs, the mean
AUC per map with a bootstrap 95% interval, and per explainer the paired share of pairs where it
beats each reference (with its interval).
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from mlc.explain import EXPLAINERS, explanations, map_to_image
from mlc.localization import BASELINE_MAPS, centre_map, random_map
from mlc.metrics import bootstrap_counts

FRACTIONS = (0.0, 0.1, 0.3, 0.5, 0.7, 0.9, 1.0)
BLUR_SIGMA_PX = 10.0
DEFAULT_PAIRS = 50
CURVES = ("deletion", "insertion")
LOWER_IS_BETTER = {"deletion": True, "insertion": False}


def sample_present_pairs(labels: np.ndarray, num_pairs: int, seed: int = 0) -> list[tuple[int, int]]:
    """A seeded subset of ``num_pairs`` present (image, class) pairs (all of them if fewer), sorted
    by image so each image is loaded once. Shared by the sanity checks (``mlc.sanity``)."""
    rows, cols = np.nonzero(np.asarray(labels) == 1)
    if len(rows) > num_pairs:
        keep = np.sort(np.random.default_rng(seed).choice(len(rows), size=num_pairs, replace=False))
        rows, cols = rows[keep], cols[keep]
    return [(int(i), int(c)) for i, c in zip(rows, cols)]


def prepare_pairs(model, dataset, num_pairs: int, seed: int, device: torch.device) -> tuple[Any, Any, list[tuple[int, int]]]:
    """(the model on ``device`` in eval mode, the dataset under the model's test transform, the seeded
    present pairs): what deletion / insertion and the sanity checks both start from."""
    from mlc.data import build_transforms

    model = model.to(device).eval()
    norm = model.normalization
    data = dataset.with_transform(build_transforms(model.image_size, train=False, mean=norm.mean, std=norm.std))
    return model, data, sample_present_pairs(dataset.labels, num_pairs, seed)


def blur(images: torch.Tensor, sigma: float = BLUR_SIGMA_PX) -> torch.Tensor:
    """Gaussian blur of an image batch (B, 3, H, W), separable, reflect padding; the kernel spans
    3 sigma each side, at most the image."""
    import torch.nn.functional as F

    radius = min(math.ceil(3 * sigma), min(images.shape[-2:]) - 1)  # reflect padding needs radius < side
    x = torch.arange(-radius, radius + 1, dtype=images.dtype, device=images.device)
    kernel = torch.exp(-(x**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    channels = images.shape[1]
    out = F.pad(images, (radius, radius, 0, 0), mode="reflect")
    out = F.conv2d(out, kernel.view(1, 1, 1, -1).expand(channels, 1, 1, -1), groups=channels)
    out = F.pad(out, (0, 0, radius, radius), mode="reflect")
    return F.conv2d(out, kernel.view(1, 1, -1, 1).expand(channels, 1, -1, 1), groups=channels)


def pixel_order(cam: np.ndarray, size: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Flat pixel indices of an image of ``size``, most relevant first by the upsampled map; ties at random."""
    heat = map_to_image(cam, size).ravel()
    return np.lexsort((rng.random(heat.size), -heat))


def perturbed(image: torch.Tensor, blurred: torch.Tensor, order: np.ndarray, fractions: Sequence[float],
              curve: str) -> torch.Tensor:
    """(len(fractions), 3, H, W): ``deletion`` blurs the first share of ``order``, ``insertion``
    starts blurred and reveals it."""
    if curve not in CURVES:
        raise ValueError(f"curve must be one of {CURVES}, got {curve!r}")
    height, width = image.shape[-2:]
    rank = torch.empty(height * width, dtype=torch.long)
    rank[torch.from_numpy(order)] = torch.arange(height * width)
    rank = rank.view(1, height, width)
    out = []
    for f in fractions:
        chosen = (rank < int(round(f * height * width))).to(image.dtype)  # (1, H, W)
        first, second = (blurred, image) if curve == "deletion" else (image, blurred)
        out.append(first * chosen + second * (1 - chosen))
    return torch.stack(out)


def area_under_curve(curve: Sequence[float], fractions: Sequence[float] = FRACTIONS) -> float:
    """Trapezoid rule over the fractions of pixels."""
    return float(np.trapezoid(np.asarray(curve, dtype=np.float64), np.asarray(fractions, dtype=np.float64)))


def pair_curves(score: Callable[[torch.Tensor], torch.Tensor], image: torch.Tensor, maps: dict[str, np.ndarray],
                rng: np.random.Generator, fractions: Sequence[float] = FRACTIONS,
                sigma: float = BLUR_SIGMA_PX, baseline: torch.Tensor | None = None) -> dict[str, dict[str, np.ndarray]]:
    """{map name: {"deletion" | "insertion": probabilities at ``fractions``}} for one image (3, H, W)
    and one class; ``score`` maps an image batch to that class's probabilities, one batch per call.
    ``baseline``: the image the removed pixels come from (default: the image blurred by ``sigma``)."""
    blurred = blur(image[None], sigma)[0] if baseline is None else baseline
    size = tuple(image.shape[-2:])
    batches, keys = [], []
    for name, cam in maps.items():
        order = pixel_order(cam, size, rng)
        for curve in CURVES:
            batches.append(perturbed(image, blurred, order, fractions, curve))
            keys.append((name, curve))
    with torch.no_grad():
        probs = score(torch.cat(batches)).detach().float().cpu().numpy().reshape(len(keys), len(fractions))
    result: dict[str, dict[str, np.ndarray]] = {}
    for (name, curve), p in zip(keys, probs):
        result.setdefault(name, {})[curve] = p
    return result


@dataclass
class Interval:
    """A mean (or share) over pairs with its bootstrap 95% interval (resampling the pairs)."""

    value: float | None
    low: float | None
    high: float | None


def bootstrap_mean(values: np.ndarray, counts: np.ndarray) -> Interval:
    """Mean of per-pair values and the 2.5 / 97.5 percentiles of its bootstrap resamples."""
    values = np.asarray(values, dtype=np.float64)
    if not len(values):
        return Interval(None, None, None)
    means = counts @ values / len(values)
    return Interval(float(values.mean()), float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5)))


@dataclass
class CurveSummary:
    """One map's curve over the pairs: mean AUC with its interval, and the mean curve."""

    auc: Interval
    curve: list[float]


@dataclass
class MapFaithfulness:
    kind: str  # CAM | Grad-CAM | attention | random | centre
    deletion: CurveSummary
    insertion: CurveSummary


@dataclass
class Faithfulness:
    """The ``faithfulness`` entry of eval.json's diagnostics (``asdict``)."""

    pairs: int
    seed: int
    fractions: list[float]
    blur_sigma_px: float
    input_size: int
    seconds: float
    maps: dict[str, MapFaithfulness] = field(default_factory=dict)  # own | grad-cam | random | centre
    # {explainer: {"deletion" | "insertion": {reference: share of pairs where the explainer's map does better}}}
    beats: dict[str, dict[str, dict[str, Interval]]] = field(default_factory=dict)
    lower_is_better: dict[str, bool] = field(default_factory=lambda: dict(LOWER_IS_BETTER))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def summarize(aucs: dict[str, dict[str, list[float]]], curves: dict[str, dict[str, list[np.ndarray]]],
              kinds: dict[str, str], explainers: Sequence[str], seed: int) -> tuple[dict, dict]:
    """Mean AUCs with intervals per map, and each explainer's paired share of wins over each reference,
    all on the same bootstrap resamples of the pairs."""
    n = len(next(iter(aucs.values()))["deletion"]) if aucs else 0
    counts = bootstrap_counts(n, 1000, seed) if n else np.zeros((0, 0))
    maps = {
        name: MapFaithfulness(kinds[name], *(CurveSummary(bootstrap_mean(np.array(aucs[name][c]), counts),
                                                          [float(x) for x in np.mean(curves[name][c], axis=0)])
                                             for c in CURVES))
        for name in aucs
    }
    beats = {}
    for explainer in explainers:
        beats[explainer] = {}
        for c in CURVES:
            ours = np.array(aucs[explainer][c])
            beats[explainer][c] = {}
            for reference in BASELINE_MAPS:
                theirs = np.array(aucs[reference][c])
                wins = (ours < theirs) if LOWER_IS_BETTER[c] else (ours > theirs)
                beats[explainer][c][reference] = bootstrap_mean(wins.astype(np.float64), counts)
    return maps, beats


def deletion_insertion(model, dataset, num_pairs: int = DEFAULT_PAIRS, seed: int = 0,
                       device: str | torch.device = "cpu", fractions: Sequence[float] = FRACTIONS,
                       sigma: float = BLUR_SIGMA_PX, explainers: Sequence[str] = EXPLAINERS) -> Faithfulness:
    """Deletion and insertion of the model's maps (own and Grad-CAM) and the two reference maps on
    ``num_pairs`` seeded present (image, class) pairs of ``dataset`` (its test transform applied)."""
    start = time.perf_counter()
    device = torch.device(device)
    model, data, pairs = prepare_pairs(model, dataset, num_pairs, seed, device)
    rng = np.random.default_rng([seed, 2])
    aucs: dict[str, dict[str, list[float]]] = {}
    curves: dict[str, dict[str, list[np.ndarray]]] = {}
    kinds: dict[str, str] = {}
    loaded: tuple[int, torch.Tensor, dict] | None = None
    for i, c in pairs:
        if loaded is None or loaded[0] != i:
            image = data[i][0].to(device)
            loaded = (i, image, explanations(model, image[None], explainers=tuple(explainers)))
        _, image, shown = loaded
        # an explainer whose maps are another's (ggnn's own maps are Grad-CAM) is measured once
        explainers = [e for k, e in enumerate(explainers) if all(shown[e] is not shown[o] for o in explainers[:k])]
        maps = {e: shown[e].maps[0, c].float().cpu().numpy() for e in explainers}
        kinds.update({e: shown[e].kind for e in explainers})
        grid = next(iter(maps.values())).shape
        maps.update(random=random_map(grid, rng), centre=centre_map(grid))
        kinds.update(random="random", centre="centre")

        def score(batch: torch.Tensor, c: int = c) -> torch.Tensor:
            return torch.sigmoid(model(batch)[:, c])

        for name, per_curve in pair_curves(score, image, maps, rng, fractions, sigma).items():
            for curve, p in per_curve.items():
                aucs.setdefault(name, {}).setdefault(curve, []).append(area_under_curve(p, fractions))
                curves.setdefault(name, {}).setdefault(curve, []).append(p)
    maps_summary, beats = summarize(aucs, curves, kinds, explainers, seed) if pairs else ({}, {})
    return Faithfulness(pairs=len(pairs), seed=seed, fractions=[float(f) for f in fractions], blur_sigma_px=float(sigma),
                        input_size=model.image_size, seconds=time.perf_counter() - start, maps=maps_summary, beats=beats)
