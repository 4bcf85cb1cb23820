"""The explain and flip views: each method's map for a class, overlaid on the photo, and its flip consistency."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from matplotlib import colormaps
from PIL import Image

from mlc.explain import EXPLAINERS, explanation_maps, flip_consistency, map_to_image, normalize_map, overlay
from mlc.serving.errors import RequestError
from mlc.serving.model_set import ModelSet
from mlc.serving.predict import _score_table, class_thresholds


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
    threshold: float = 0.5  # the method's threshold for this class (per-class where it has one)


def resolve_class(model_set: ModelSet, class_name: str | None, mean_scores: pd.Series) -> str:
    """The requested class, or the top-scoring one (mean over methods) when none is given."""
    if not class_name:
        return str(mean_scores.idxmax())
    if class_name not in model_set.classes:
        raise RequestError(f"Unknown class {class_name!r}; the models know: {', '.join(model_set.classes)}.")
    return class_name


def class_maps(model_set: ModelSet, image: Image.Image, class_name: str | None,
               explainer: str = "own") -> tuple[str, list[ClassMap]]:
    """Every method's evidence map for one class: its own explainer (CAM, SSGRL attention, or
    Grad-CAM where a head has neither) or Grad-CAM for all (``mlc.explain.explanation_maps``)."""
    model_set.require_models()
    if explainer not in EXPLAINERS:
        raise RequestError(f"explainer must be one of {', '.join(EXPLAINERS)}, got {str(explainer)[:20]!r}.")
    with model_set.session():
        features = model_set.features(model_set.inputs(image))
        results = {n: explanation_maps(m.model, features=features[n], explainer=explainer)
                   for n, m in model_set.methods.items()}
    mean_scores = _score_table(model_set, {n: r[0] for n, r in results.items()}).mean(axis=1)
    chosen = resolve_class(model_set, class_name, mean_scores)
    maps = []
    thresholds = class_thresholds(model_set, None)  # each method's own (per-class where it has them)
    for name, (logits, per_class, kind) in results.items():
        model = model_set.methods[name].model
        if chosen in model.classes:
            c = model.classes.index(chosen)
            maps.append(ClassMap(name, kind, per_class[0, c].cpu().numpy(), float(torch.sigmoid(logits[0, c])),
                                 thresholds[name].get(chosen, 0.5)))
    return chosen, maps


_KIND_READING = {
    "CAM": "**CAM** ({}) shows how much each place adds to the class score (its positive part: places that "
           "lower the score are not coloured)",
    "Grad-CAM": "**Grad-CAM** ({}) weights the feature maps by the score's gradient, positive part",
    "attention": "**attention** ({}) is where the class's semantic decoupling looks; it sums to 1 over the image",
}


def map_reading(maps: list[ClassMap], scaling: str) -> str:
    """How to read these maps: which methods show which kind, and which colour scale is on."""
    kinds: dict[str, list[str]] = {}
    for m in maps:
        kinds.setdefault(m.kind, []).append(m.method)
    parts = [_KIND_READING.get(kind, f"**{kind}** ({{}})").format(", ".join(methods)) for kind, methods in kinds.items()]
    scale = ("Each map has its own colour scale, from 0 to its own largest value (the bar in its corner): "
             "compare where, not how strongly." if scaling == "per-map" else
             "Maps of one kind share one colour scale, from 0 to the largest value among them (the bar in "
             "each corner): a weak map looks weak.")
    return (f"How to read the maps: {'; '.join(parts)}. {scale} An empty map has no place that raises the "
            "score. A dimmed map belongs to a method that does not predict the class (below its threshold): "
            "it shows where that method looked, not evidence.")


SCALINGS = ("per-map", "shared")  # the explain view's colour scales


FLIP_READING = (
    "The map of the image and the map of its mirror image (mirrored back) share one colour scale; the "
    "third image is their difference (red: stronger in the image's own map, blue: stronger in the "
    "mirrored one, white: equal). **cosine** 1 = the map mirrors perfectly, 0 = unrelated; empty maps "
    "have none. **L_A** = mean squared difference of the two maps (G-CAM's training loss), in the map's "
    "own units: compare it between methods of the same map kind (CAMs are in logit units; attention sums "
    "to 1, so its L_A is tiny)."
)


COLOUR_BAR_FONT_SCALE = 0.9  # Hershey simplex: digits about 20 px high on the 448 px overlay
COLOUR_BAR_TEXT_PX = 20  # so about 11 px in a five-column desktop gallery, where the overlay shows at ~250 px


def _colour_bar(canvas: np.ndarray, high: float, label: str) -> np.ndarray:
    """Draw the JET scale (0 .. high) with its end values along the bottom edge, in place; the text
    is sized for the gallery, which shows a 448 px overlay at about half that width."""
    import cv2

    h, w = canvas.shape[:2]
    bar_w, bar_h, text_h = min(220, w // 2), 14, 8 + COLOUR_BAR_TEXT_PX
    x0, y0 = w - bar_w - 8, h - bar_h - text_h
    if x0 < 0 or y0 < 0:
        return canvas
    cv2.rectangle(canvas, (x0 - 6, y0 - 6), (w - 2, h - 2), (255, 255, 255), -1)
    ramp = cv2.applyColorMap(np.uint8(np.linspace(0, 255, bar_w))[None, :].repeat(bar_h, 0), cv2.COLORMAP_JET)
    canvas[y0:y0 + bar_h, x0:x0 + bar_w] = ramp[:, :, ::-1]
    text = dict(fontFace=cv2.FONT_HERSHEY_SIMPLEX, fontScale=COLOUR_BAR_FONT_SCALE, color=(0, 0, 0), thickness=2,
                lineType=cv2.LINE_AA)
    cv2.putText(canvas, "0", (x0, h - 7), **text)
    end = f"{high:.3g} {label}"
    (tw, _), _ = cv2.getTextSize(end, text["fontFace"], text["fontScale"], text["thickness"])
    cv2.putText(canvas, end, (max(x0 + 30, w - 6 - tw), h - 7), **text)
    return canvas


def explanation_gallery(image: Image.Image, maps: list[ClassMap], scaling: str = "per-map") -> list[tuple[np.ndarray, str]]:
    """(overlay, caption) per method, the whole image (aspect kept). ``scaling``: "per-map" (each map
    from 0 to its own largest value: no map looks blank) or "shared" (maps of one kind share a scale,
    so a weak map looks weak). A method that does not predict the class has its map dimmed and says
    so; an empty map says why."""
    if scaling not in SCALINGS:
        raise RequestError(f"scaling must be one of {', '.join(SCALINGS)}, got {str(scaling)[:20]!r}.")
    canvas = display_array(image)
    top = {}
    for m in maps:
        top[m.kind] = max(top.get(m.kind, 0.0), float(np.max(m.map)))
    items = []
    for m in maps:
        high = top[m.kind] if scaling == "shared" else float(np.max(m.map))
        heat = np.clip(m.map / high, 0.0, 1.0) if high > 0 else np.zeros_like(m.map)
        predicted = m.probability >= m.threshold
        picture = overlay(canvas, heat, alpha=0.5 if predicted else 0.3, normalize=False)
        if not predicted:  # dimmed: towards white
            picture = np.uint8(0.45 * picture + 0.55 * 255)
        picture = _colour_bar(np.ascontiguousarray(picture), max(high, 0.0), m.kind)
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
