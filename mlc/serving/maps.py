"""The explain and flip views: each method's map for a class, overlaid on the photo, and its flip consistency."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from matplotlib import colormaps
from PIL import Image

from mlc.explain import explanation_maps, flip_consistency, map_to_image, normalize_map, overlay
from mlc.serving.errors import RequestError
from mlc.serving.model_set import ModelSet
from mlc.serving.predict import _score_table


DISPLAY_SIDE = 448  # overlays are drawn at this size


def display_array(image: Image.Image, side: int = DISPLAY_SIDE) -> np.ndarray:
    """RGB uint8 canvas for the overlays: longer side ``side`` px (tiny images are enlarged), same aspect."""
    scale = side / max(image.size)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return np.asarray(image.resize(size, Image.Resampling.BILINEAR), dtype=np.uint8)


@dataclass
class ClassMap:
    """One method's map for one class, at feature-map resolution."""

    method: str
    kind: str  # CAM | Grad-CAM | attention
    map: np.ndarray  # (h, w)
    probability: float


def resolve_class(model_set: ModelSet, class_name: str | None, mean_scores: pd.Series) -> str:
    """The requested class, or the top-scoring one (mean over methods) when none is given."""
    if not class_name:
        return str(mean_scores.idxmax())
    if class_name not in model_set.classes:
        raise RequestError(f"Unknown class {class_name!r}; the models know: {', '.join(model_set.classes)}.")
    return class_name


def class_maps(model_set: ModelSet, image: Image.Image, class_name: str | None) -> tuple[str, list[ClassMap]]:
    """Every method's explanation map (``mlc.explain.explanation_maps`` picks its kind) for one class."""
    model_set.require_models()
    with model_set.session():
        features = model_set.features(model_set.inputs(image))
        results = {n: explanation_maps(m.model, features=features[n]) for n, m in model_set.methods.items()}
    mean_scores = _score_table(model_set, {n: r[0] for n, r in results.items()}).mean(axis=1)
    chosen = resolve_class(model_set, class_name, mean_scores)
    maps = []
    for name, (logits, per_class, kind) in results.items():
        classes = model_set.methods[name].model.classes
        if chosen in classes:
            c = classes.index(chosen)
            maps.append(ClassMap(name, kind, per_class[0, c].cpu().numpy(), float(torch.sigmoid(logits[0, c]))))
    return chosen, maps


MAP_READING = (
    "How to read the maps: **CAM** (baseline, mlgcn, gcam) shows how much each place adds to the class "
    "score; these share one colour scale, from 0 to the largest value among them (the bar in each corner), "
    "and places that lower the score are not coloured. **Grad-CAM** (ggnn) weights the feature maps by "
    "the score's gradient; it is empty when no place raises the score. **Attention** (ssgrl) is where the "
    "class's semantic decoupling looks; it sums to 1 over the image. A dimmed map belongs to a method "
    "that does not predict the class (p below 0.5): it shows where that method looked, not evidence."
)


FLIP_READING = (
    "The map of the image and the map of its mirror image (mirrored back) share one colour scale; the "
    "third image is their difference (red: stronger in the image's own map, blue: stronger in the "
    "mirrored one, white: equal). **cosine** 1 = the map mirrors perfectly, 0 = unrelated; empty maps "
    "have none. **L_A** = mean squared difference of the two maps (G-CAM's training loss), in the map's "
    "own units: compare it between methods of the same map kind (CAMs are in logit units; attention sums "
    "to 1, so its L_A is tiny)."
)


def _colour_bar(canvas: np.ndarray, high: float, label: str) -> np.ndarray:
    """Draw the JET scale (0 .. high) with its end values in the lower right corner, in place."""
    import cv2

    h, w = canvas.shape[:2]
    bar_w, bar_h = min(120, w // 3), 8
    x0, y0 = w - bar_w - 6, h - bar_h - 18
    if x0 < 0 or y0 < 0:
        return canvas
    cv2.rectangle(canvas, (x0 - 4, y0 - 4), (w - 2, h - 2), (255, 255, 255), -1)
    ramp = cv2.applyColorMap(np.uint8(np.linspace(0, 255, bar_w))[None, :].repeat(bar_h, 0), cv2.COLORMAP_JET)
    canvas[y0:y0 + bar_h, x0:x0 + bar_w] = ramp[:, :, ::-1]
    text = dict(fontFace=cv2.FONT_HERSHEY_SIMPLEX, fontScale=0.35, color=(0, 0, 0), thickness=1, lineType=cv2.LINE_AA)
    cv2.putText(canvas, "0", (x0, h - 6), **text)
    end = f"{high:.3g} {label}"
    (tw, _), _ = cv2.getTextSize(end, text["fontFace"], text["fontScale"], 1)
    cv2.putText(canvas, end, (max(x0, w - 4 - tw), h - 6), **text)
    return canvas


def explanation_gallery(image: Image.Image, maps: list[ClassMap], threshold: float = 0.5) -> list[tuple[np.ndarray, str]]:
    """(overlay, caption) per method, the whole image (aspect kept). Maps of one kind share a scale
    from 0 to their largest value, so a weak map looks weak; a method that does not predict the
    class has its map dimmed and says so; an empty map says why."""
    canvas = display_array(image)
    top = {}
    for m in maps:
        top[m.kind] = max(top.get(m.kind, 0.0), float(np.max(m.map)))
    items = []
    for m in maps:
        high = top[m.kind]
        heat = np.clip(m.map / high, 0.0, 1.0) if high > 0 else np.zeros_like(m.map)
        predicted = m.probability >= threshold
        picture = overlay(canvas, heat, alpha=0.5 if predicted else 0.3, normalize=False)
        if not predicted:  # dimmed: towards white
            picture = np.uint8(0.45 * picture + 0.55 * 255)
        picture = _colour_bar(np.ascontiguousarray(picture), high, m.kind)
        caption = f"{m.method} - {m.kind} - p = {m.probability:.2f}"  # short: the gallery shows one line
        if not predicted:
            caption += " - not predicted"
        if float(np.max(m.map)) <= 0:
            caption += " - empty (nothing raises the score)"
        items.append((picture, caption))
    return items


@dataclass
class FlipResult:
    """Flip consistency of every method for one class, and the maps of the method on display."""

    class_name: str
    method: str
    kind: str
    original: np.ndarray  # (h, w) map of the image
    flipped_back: np.ndarray  # (h, w) map of the mirrored image, mirrored back
    scores: pd.DataFrame  # method, map, cosine, L_A


def flip_views(model_set: ModelSet, image: Image.Image, method: str, class_name: str | None) -> FlipResult:
    """CAM(I) against flip(CAM(flip(I))) for every method (``mlc.explain.flip_consistency``)."""
    model_set.require_models()
    shown = model_set.method(method).name
    with model_set.session():
        inputs = model_set.inputs(image)
        features, mirrored = model_set.features(inputs), model_set.features(inputs, flipped=True)
        with torch.no_grad():
            logits = {n: m.model.forward_head(features[n]).logits for n, m in model_set.methods.items()}
        chosen = resolve_class(model_set, class_name, _score_table(model_set, logits).mean(axis=1))
        consistency = {
            n: flip_consistency(m.model, features=features[n], flipped_features=mirrored[n])
            for n, m in model_set.methods.items() if chosen in m.model.classes
        }
    if shown not in consistency:
        raise RequestError(f"{shown} has no class {chosen!r}.")
    rows = []
    for name, fc in consistency.items():
        c = model_set.methods[name].model.classes.index(chosen)
        cosine, squared_error = float(fc.score[0, c]), float(fc.squared_error[0, c])
        empty = bool(fc.empty[0, c])
        rows.append({"method": name, "map": fc.kind, "cosine": None if empty else cosine, "L_A": squared_error,
                     "note": "empty map: no place raises this class's score, so no cosine" if empty else ""})
    c = model_set.methods[shown].model.classes.index(chosen)
    fc = consistency[shown]
    return FlipResult(chosen, shown, fc.kind, fc.maps[0, c].cpu().numpy(), fc.flipped_back[0, c].cpu().numpy(), pd.DataFrame(rows))


def difference_image(canvas: np.ndarray, difference: np.ndarray) -> np.ndarray:
    """The signed difference in a diverging colormap (white = 0, symmetric range) over the grey image."""
    limit = float(np.abs(difference).max()) or 1.0
    heat = map_to_image(difference / limit, canvas.shape[:2])
    colored = colormaps["RdBu_r"]((heat + 1.0) / 2.0)[..., :3] * 255.0
    grey = canvas.astype(np.float32).mean(axis=2, keepdims=True)
    return np.uint8(np.clip(0.35 * grey + 0.65 * colored, 0, 255))


def flip_gallery(image: Image.Image, result: FlipResult) -> list[tuple[np.ndarray, str]]:
    """Map, flipped-back map (scaled together so their strengths compare) and their difference."""
    canvas = display_array(image)
    both = normalize_map(np.stack([result.original, result.flipped_back]))
    limit = float(np.abs(result.original - result.flipped_back).max())
    label = f"{result.method} - {result.kind}"
    return [
        (overlay(canvas, both[0], normalize=False), f"{label}: map of the image"),
        (overlay(canvas, both[1], normalize=False), f"{label}: mirrored, flipped back"),
        (difference_image(canvas, result.original - result.flipped_back), f"difference (scale +-{limit:.2g})"),
    ]
