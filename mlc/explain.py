"""Explanations: CAM, Grad-CAM, SSGRL attention, flip consistency, and overlays on the image.

CAM is defined here once and reused by the models (``explain=True``) and by the G-CAM loss.

Two forms of a map, one function each:

- the **raw** map (``class_activation_maps``): the signed CAM, sum_k W[c, k] F_k, what G-CAM's
  attention-consistency loss compares (the shipped checkpoints were trained on it) and what the
  flip / scale consistency measures report, so their L_A is the loss's own term;
- the **evidence** map (``positive_evidence``): its ReLU, the positive evidence for the class, as
  in the CAM / Grad-CAM literature and pytorch-grad-cam. This is the map a visitor is shown and the
  one every measure of maps reads (pointing game, box energy, deletion / insertion, sanity
  checks). A map with no positive cell is **empty**: it has no evidence to point with, so the
  pointing game counts it as a miss and reports how many were empty (``mlc.localization``).

``explanation_maps`` returns evidence maps unless asked for ``raw=True``; its ``explainer`` is the
method's own ("own": CAM, SSGRL attention, or Grad-CAM where a head has neither) or Grad-CAM for
every method ("grad-cam"), so methods can be compared on one explainer.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


def class_activation_maps(features: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """CAM (Zhou et al. 2016): Q_c = sum_k W[c, k] F_k for every class at once -> (B, C, h, w).

    For average pooling, mean_hw Q_c + b_c equals the logit of class c.
    """
    return torch.einsum("ck,bkhw->bchw", weights, features)


def positive_evidence(maps: torch.Tensor) -> torch.Tensor:
    """ReLU of a map: what raises the class score. The one display / diagnostic transform of a map."""
    return maps.clamp(min=0)


def empty_maps(maps: torch.Tensor) -> torch.Tensor:
    """(B, C) True where a map has no positive cell (no evidence for the class) -> (B, C) bool."""
    return maps.flatten(2).amax(-1) <= 0


def grad_cam(model, features: torch.Tensor) -> torch.Tensor:
    """Grad-CAM (Selvaraju et al. 2017) for every class: ReLU(sum_k alpha_ck F_k), alpha = mean_hw dy_c/dF_k.

    Only the head is differentiated (features are given), so C classes cost C small backward passes.
    """
    features = features.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = model.forward_head(features).logits
        maps = []
        for c in range(logits.shape[1]):
            (grad,) = torch.autograd.grad(logits[:, c].sum(), features, retain_graph=c < logits.shape[1] - 1)
            alpha = grad.mean(dim=(2, 3))  # (B, N)
            maps.append(F.relu(torch.einsum("bk,bkhw->bhw", alpha, features)))
    return torch.stack(maps, dim=1).detach()


EXPLAINERS = ("own", "grad-cam")


def explanation_maps(
    model,
    images: torch.Tensor | None = None,
    features: torch.Tensor | None = None,
    explainer: str = "own",
    raw: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, str]:
    """(logits, per-class maps (B, C, h, w), kind) of ``explainer``: "own" gives CAM where it
    exists, else SSGRL attention, else Grad-CAM; "grad-cam" gives Grad-CAM for any head.

    Maps are evidence maps (``positive_evidence``) unless ``raw``: then a CAM keeps its sign (the
    map G-CAM's loss trains; Grad-CAM and attention are non-negative either way).
    Give ``features`` (the backbone's maps) instead of ``images`` to reuse one backbone pass.
    """
    if explainer not in EXPLAINERS:
        raise ValueError(f"explainer must be one of {EXPLAINERS}, got {explainer!r}")
    with torch.no_grad():
        if features is None:
            out = model.explain(images)
        else:
            out = model.forward_head(features, explain=True)
            out.features = features
    if explainer == "own" and out.cams is not None:
        return out.logits, out.cams if raw else positive_evidence(out.cams), "CAM"
    if explainer == "own" and out.attention is not None:
        return out.logits, out.attention, "attention"
    return out.logits, grad_cam(model, out.features), "Grad-CAM"


@dataclass
class Explanation:
    """One explainer's evidence maps of a batch: logits (B, C), maps (B, C, h, w) and their kind."""

    logits: torch.Tensor
    maps: torch.Tensor
    kind: str


def explanations(model, images: torch.Tensor | None = None, features: torch.Tensor | None = None,
                 explainers: tuple[str, ...] = EXPLAINERS) -> dict[str, Explanation]:
    """The method's own maps and Grad-CAM side by side ({explainer: Explanation}), so methods can be
    compared on one explainer; where the own maps are Grad-CAM already, they are not computed twice."""
    if features is None:
        with torch.no_grad():
            features = model.forward_features(images)
    result: dict[str, Explanation] = {}
    for explainer in explainers:
        same = next((e for e in result.values() if explainer == "grad-cam" and e.kind == "Grad-CAM"), None)
        result[explainer] = same or Explanation(*explanation_maps(model, features=features, explainer=explainer))
    return result


def map_transform(maps: torch.Tensor, transform: str, like: torch.Tensor | None = None) -> torch.Tensor:
    """T(Q(I)): maps of an image carried over to where the maps of its transformed copy lie, as
    G-CAM defines it: "flip" mirrors them, "scale" resizes them (bilinear) to ``like``'s size."""
    if transform == "flip":
        return maps.flip(-1)
    if transform == "scale":
        if like is None:
            raise ValueError("the scale transform needs the maps of the scaled image (like=...)")
        return F.interpolate(maps, size=like.shape[-2:], mode="bilinear", align_corners=False)
    raise ValueError(f"transform must be 'flip' or 'scale', got {transform!r}")


@dataclass
class MapConsistency:
    """Two maps per image and class (B, C, h, w) that should agree: the image's maps carried by a
    transform (``map_transform``) and the maps of the transformed image."""

    maps: torch.Tensor
    other: torch.Tensor
    kind: str

    @property
    def difference(self) -> torch.Tensor:
        return self.maps - self.other

    @property
    def squared_error(self) -> torch.Tensor:
        """G-CAM's L_A per image and class (mean over positions) -> (B, C)."""
        return self.difference.pow(2).mean(dim=(2, 3))

    @property
    def score(self) -> torch.Tensor:
        """Cosine similarity of the two maps per image and class, in [-1, 1]; 1 = perfectly consistent."""
        a, b = self.maps.flatten(2), self.other.flatten(2)
        return F.cosine_similarity(a, b, dim=-1, eps=1e-12)

    @property
    def empty(self) -> torch.Tensor:
        """(B, C) True where either map is all zero (no cosine: e.g. Grad-CAM of an absent class)."""
        return (self.maps.flatten(2).abs().amax(-1) <= 1e-12) | (self.other.flatten(2).abs().amax(-1) <= 1e-12)


@dataclass
class FlipConsistency(MapConsistency):
    """Maps of the image and of its mirror image flipped back (the flip is its own inverse)."""

    @property
    def flipped_back(self) -> torch.Tensor:
        return self.other


def flip_consistency(
    model,
    images: torch.Tensor | None = None,
    features: torch.Tensor | None = None,
    flipped_features: torch.Tensor | None = None,
) -> FlipConsistency:
    """CAM(I) against flip(CAM(flip(I))) (or the model's attention / Grad-CAM maps).

    Raw maps (signed CAMs), so ``squared_error`` is G-CAM's flip term L_A as the loss computes it.
    Either ``images``, or the backbone maps of the image and of its mirror image.
    """
    if features is None or flipped_features is None:
        _, maps, kind = explanation_maps(model, images, raw=True)
        _, flipped, _ = explanation_maps(model, images.flip(-1), raw=True)
    else:
        _, maps, kind = explanation_maps(model, features=features, raw=True)
        _, flipped, _ = explanation_maps(model, features=flipped_features, raw=True)
    return FlipConsistency(maps=maps, other=map_transform(flipped, "flip"), kind=kind)


def rescale(images: torch.Tensor, size: int) -> torch.Tensor:
    """The image batch resized to ``size`` x ``size`` (bilinear, antialiased): G-CAM's scale view."""
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


def scale_consistency(model, maps: torch.Tensor, kind: str, scaled_features: torch.Tensor) -> MapConsistency:
    """G-CAM's scale term: the image's maps resized to the map size of a rescaled copy, against
    the maps of that copy (``scaled_features``: its backbone maps). Raw maps, as in the loss."""
    _, scaled, _ = explanation_maps(model, features=scaled_features, raw=True)
    return MapConsistency(maps=map_transform(maps, "scale", like=scaled), other=scaled, kind=kind)


def normalize_map(cam: np.ndarray) -> np.ndarray:
    """Min-max to [0, 1]; a constant map becomes zeros (not a division by zero)."""
    cam = np.asarray(cam, dtype=np.float32)
    lo, hi = float(cam.min()), float(cam.max())
    return np.zeros_like(cam) if hi - lo < 1e-12 else (cam - lo) / (hi - lo)


def map_to_image(cam: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A (h, w) map over the model's input, brought onto an image of ``size`` = (height, width) px.

    The models see the whole image squashed to a square (``mlc.data.transforms``: resize, no crop),
    so map cell (i, j) covers the same share of any image: a bilinear resize with cells centred at
    half-pixel positions puts it back, whatever the aspect ratio. The app's overlays and the
    localisation scores (``mlc.localization``) both use this function.
    """
    import cv2

    height, width = int(size[0]), int(size[1])
    return cv2.resize(np.asarray(cam, dtype=np.float32), (width, height), interpolation=cv2.INTER_LINEAR)


def overlay(image: np.ndarray, cam: np.ndarray, alpha: float = 0.5, normalize: bool = True) -> np.ndarray:
    """Blend a (h, w) map, upsampled to the image, over an RGB uint8 image with the JET colormap."""
    import cv2

    heat = map_to_image(normalize_map(cam) if normalize else np.clip(cam, 0.0, 1.0), image.shape[:2])
    colored = cv2.applyColorMap(np.uint8(255 * heat), cv2.COLORMAP_JET)[:, :, ::-1]
    return np.uint8(np.clip((1 - alpha) * image.astype(np.float32) + alpha * colored, 0, 255))
