"""What each method sees: localisation of its maps, their faithfulness and sanity, flip consistency, the graph's share.

``diagnose(model, dataset)`` runs one trained model over an evaluation split and returns the
``diagnostics`` entry of ``eval.json`` (fractions in [0, 1]; null where undefined):

- ``map`` (the map kind: CAM, Grad-CAM or attention, as ``mlc.explain.explanation_maps`` picks it),
  ``input_size`` (px, square) and ``map_size`` ([h, w] cells).
- ``localization``: for every positive (image, class) pair with a box of the class, the pointing
  game and box energy (``mlc.localization``) of the method's map and, beside it, of a ``random`` and
  a ``centre`` map, and of Grad-CAM for every method (``grad_cam``: one explainer for all five;
  for ggnn it is its own map): ``{"tolerance", "method" | "grad_cam" | "random" | "centre":
  LocalizationTally.summary()}``;
  maps are scored as shown (``mlc.explain.positive_evidence``), an empty map as a miss (its count
  in ``empty_pairs``);
  ``{"skipped": reason}`` when the dataset has no boxes.
- ``flip``: the raw (signed) map of the image against the map of its mirror image flipped back
  (``mlc.explain.flip_consistency``), at ``input_size``: ``cosine`` (mean over positive pairs whose
  two maps are not both empty; 1 = the map mirrors perfectly), ``la`` (G-CAM's flip term L_A: the
  squared difference averaged over positions, classes and images, in the map's own units: logits per
  cell for CAM, attention weights summing to 1 for attention), ``la_positive`` (the same over positive
  pairs only), ``pairs``, ``empty_pairs`` and ``per_class`` lists of ``cosine`` and ``la``.
- ``scale``: the same for G-CAM's scale term: the image's maps resized to the maps of the image
  rescaled to ``size`` px (``ratio`` = ``size`` / ``input_size``) against those maps. The size is
  the model's own second scale when it trains with one (G-CAM's ``scale_ratio`` / ``scale_size``),
  else ``DEFAULT_SCALE_RATIO`` x ``input_size`` (G-CAM's 192 px at 224, so 384 px at 448); null
  when ``scale_ratio`` is None.
- ``faithfulness``: deletion and insertion (``mlc.faithfulness.deletion_insertion``, Petsiuk et al.
  2018) of the own map, Grad-CAM and the random / centre maps on ``faithfulness_pairs`` seeded present
  pairs: mean AUC with bootstrap 95% intervals, mean curves, paired shares of wins over each
  reference, and its cost (``seconds``); null when ``faithfulness_pairs`` is 0.
- ``sanity``: the sanity checks (``mlc.sanity``, Adebayo et al. 2018) on the same pairs: median
  Spearman between the maps of the model and of the model with its classifier re-drawn, and
  between a present and an absent class's maps; ``seconds``; null when ``faithfulness_pairs`` is 0.
- ``graph``: null for a variant without a label graph, else the model evaluated again with its
  graph replaced by no graph (``MultiLabelModel.identity_graph``, no retraining):
  ``{"map", "map_identity", "difference" (map - map_identity), "per_class": {"ap", "ap_identity"},
  "no_graph": what replaced the graph}``.

``disagreement(scores)`` ranks the images of one split by how much several methods' predicted label
sets differ (the group report stores the top of it for the app's gallery).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

from mlc.data.base import MultiLabelDataset
from mlc.diagnostics_record import Diagnostics
from mlc.explain import explanations, flip_consistency, rescale, scale_consistency
from mlc.faithfulness import DEFAULT_PAIRS, deletion_insertion
from mlc.localization import (
    POINTING_TOLERANCE,
    LocalizationTally,
    centre_map,
    random_map,
    score_map,
)
from mlc.metrics import evaluate, nanmean
from mlc.sanity import sanity_on_dataset

DEFAULT_SCALE_RATIO = 192 / 224  # G-CAM's second scale, as a share of the input size
MAP_UNITS = {"CAM": "logit per cell", "Grad-CAM": "gradient-weighted activation", "attention": "weight (sums to 1)"}


def _image_size(dataset: MultiLabelDataset, i: int) -> tuple[int, int]:
    """(height, width) of image i, from its header (no decode)."""
    with Image.open(dataset.image_paths[i]) as image:
        width, height = image.size
    return height, width


@torch.no_grad()
def diagnose(
    model,
    dataset: MultiLabelDataset,
    device: str | torch.device = "cpu",
    batch_size: int = 32,
    num_workers: int = 0,
    tolerance: float = POINTING_TOLERANCE,
    seed: int = 0,
    scale_ratio: float | str | None = "model",
    return_scores: bool = False,
    progress: bool = False,  # a tqdm bar over the batches (the CLI's long evaluations)
    faithfulness_pairs: int = DEFAULT_PAIRS,
) -> dict[str, Any] | tuple[dict[str, Any], np.ndarray]:
    """The ``diagnostics`` entry of eval.json for ``model`` on ``dataset`` (see the module docstring).

    The model's own test transform is applied here (any transform of ``dataset`` is replaced).
    ``return_scores``: also return the (N, C) probabilities of its forward passes, so a caller
    that wants the metrics too needs no pass of its own. ``scale_ratio``: "model" (the model's own
    second scale, see ``scale_size``), a share of the input size, or None (no scale term).
    """
    from mlc.data import build_transforms

    if list(dataset.classes) != list(model.classes):
        raise ValueError(f"the dataset's classes {list(dataset.classes)[:5]}... differ from the model's {model.classes[:5]}...")
    device = torch.device(device)
    model = model.to(device).eval()
    norm = model.normalization
    transform = build_transforms(model.image_size, train=False, mean=norm.mean, std=norm.std)
    loader = torch.utils.data.DataLoader(dataset.with_transform(transform), batch_size=batch_size,
                                         num_workers=num_workers)
    targets = dataset.labels
    boxes = dataset.has_boxes
    rng = np.random.default_rng(seed)
    ties = np.random.default_rng([seed, 1])  # among tied peak cells; apart from ``rng``'s random maps
    tally = LocalizationTally(model.num_classes)
    logits_all, identity_all = [], []
    pairs_of = {"flip": ([], []), "scale": ([], [])}  # per transform: squared errors, cosines
    scaled_size = scale_size(model, scale_ratio)
    kind, map_size, pairs_without_boxes, centre = "", None, 0, None
    start = 0
    from tqdm import tqdm

    for images, _ in tqdm(loader, desc="evaluate", unit="batch", disable=not progress, leave=False):
        images = images.to(device)
        features = model.forward_features(images)
        mirrored = model.forward_features(images.flip(-1))
        flip = flip_consistency(model, features=features, flipped_features=mirrored)
        maps, kind = flip.maps, flip.kind  # the image's own maps
        logits_all.append(model.forward_head(features).logits.float().cpu())
        if model.has_label_graph:
            with model.identity_graph():
                identity_all.append(model.forward_head(features).logits.float().cpu())
        pairs = {"flip": flip}
        if scaled_size:
            pairs["scale"] = scale_consistency(model, maps, kind, model.forward_features(rescale(images, scaled_size)))
        for name, pair in pairs.items():
            cos = pair.score.float().cpu()
            cos[pair.empty.cpu()] = float("nan")  # no cosine for an empty map
            pairs_of[name][0].append(pair.squared_error.float().cpu())
            pairs_of[name][1].append(cos)
        shown = explanations(model, features=features)  # evidence maps: own and Grad-CAM
        maps = shown["own"].maps.float().cpu().numpy()
        grad_maps = shown["grad-cam"].maps.float().cpu().numpy()
        map_size = list(maps.shape[-2:])
        if centre is None:
            centre = centre_map(maps.shape[-2:])
        for b in range(maps.shape[0]):
            i = start + b
            positives = np.flatnonzero(targets[i] == 1)
            if not boxes or not len(positives):
                continue
            annotation, size = dataset.boxes(i), _image_size(dataset, i)
            for c in positives:
                if not annotation.of_class(int(c)):
                    pairs_without_boxes += 1
                    continue
                for source, cam in (("method", maps[b, c]), ("random", random_map(maps.shape[-2:], rng)),
                                    ("centre", centre), ("grad_cam", grad_maps[b, c])):
                    tally.add_score(source, int(c), score_map(cam, annotation, int(c), size, tolerance, ties))
        start += images.shape[0]

    positive = targets == 1
    consistency = {name: _consistency(torch.cat(sq).numpy(), torch.cat(co).numpy(), positive, kind)
                   for name, (sq, co) in pairs_of.items() if sq}
    if "scale" in consistency:
        consistency["scale"].update(size=scaled_size, ratio=scaled_size / model.image_size)
    if boxes:
        localization = {"tolerance": tolerance, "pairs_without_boxes": pairs_without_boxes,
                        **{source: tally.summary(source) for source in ("method", "grad_cam", "random", "centre")}}
    else:
        localization = {"skipped": f"{type(dataset).__name__} has no object boxes"}
    scores = torch.cat(logits_all).sigmoid().numpy()
    graph = None
    if identity_all:
        real = evaluate(scores, targets, classes=model.classes)
        ablated = evaluate(torch.cat(identity_all).sigmoid().numpy(), targets, classes=model.classes)
        graph = {"map": real.map, "map_identity": ablated.map, "difference": real.map - ablated.map,
                 "no_graph": model.no_graph_description,
                 "per_class": {"ap": real.ap, "ap_identity": ablated.ap}}
    faithfulness = sanity = None
    if faithfulness_pairs:
        faithfulness = deletion_insertion(model, dataset, faithfulness_pairs, seed, device).to_dict()
        sanity = sanity_on_dataset(model, dataset, faithfulness_pairs, seed, device).to_dict()
    result = Diagnostics(map=kind, input_size=model.image_size, map_size=map_size, num_images=len(dataset),
                         localization=localization, flip=consistency["flip"], scale=consistency.get("scale"),
                         faithfulness=faithfulness, sanity=sanity, graph=graph).to_dict()
    return (result, scores) if return_scores else result


def scale_size(model, scale_ratio: float | str | None = "model") -> int | None:
    """Side (px) of the rescaled image the scale term compares with the model's input size.

    "model": the second scale the model trains with (G-CAM's ``scaled_size``, which follows its
    input size unless pinned), else ``DEFAULT_SCALE_RATIO`` of the input size, so a 448 px model is
    measured at 384 px, not at a size taken from 224 px models.
    """
    if scale_ratio is None or scale_ratio == 0:
        return None
    if scale_ratio == "model":
        own = getattr(model, "scaled_size", None)
        size = own(model.image_size) if callable(own) else None
        if size:
            return int(size)
        scale_ratio = DEFAULT_SCALE_RATIO
    return max(32, int(round(model.image_size * float(scale_ratio))))


def _consistency(squared_error: np.ndarray, cos: np.ndarray, positive: np.ndarray, kind: str) -> dict[str, Any]:
    """Summary of one transform's (N, C) squared errors and cosines (nan: an empty map)."""
    pos_cos = np.where(positive, cos, np.nan)
    return {
        "cosine": nanmean(pos_cos.ravel()),
        "la": float(squared_error.mean()),
        "la_positive": nanmean(np.where(positive, squared_error, np.nan).ravel()),
        "pairs": int(positive.sum()),
        "empty_pairs": int((positive & np.isnan(cos)).sum()),
        "units": MAP_UNITS.get(kind, kind),
        "per_class": {"cosine": [nanmean(pos_cos[:, c]) for c in range(positive.shape[1])],
                      "la": [float(x) for x in squared_error.mean(axis=0)]},
    }


def disagreement(scores: Mapping[str, np.ndarray], ids: Sequence[str], classes: Sequence[str],
                 targets: np.ndarray | None = None, threshold: float = 0.5, top: int = 12) -> dict[str, Any]:
    """Where the methods' predicted label sets (score >= ``threshold``) differ most on one split.

    An image's ``split_labels`` counts the classes some methods predict and others do not; ties
    are broken by the mean pairwise Jaccard distance between the methods' sets. Returns
    ``{"threshold", "methods", "num_images", "agree_all" (share of images where every method
    predicts the same set), "pairwise_jaccard" ({a: {b: mean Jaccard similarity of the two sets,
    1 when both empty}}), "images": [{"id", "split_labels", "jaccard_distance", "true": [labels],
    "predicted": {method: [labels]}, "scores": {method: {label: p}} for the labels any method
    predicts or the image has}] (the ``top`` most disputed, most disputed first)}``.
    """
    methods = list(scores)
    if len(methods) < 2:
        raise ValueError("disagreement needs the scores of at least two methods")
    stacked = np.stack([np.asarray(scores[m], dtype=np.float64) for m in methods])  # (M, N, C)
    if stacked.shape[1] != len(ids) or stacked.shape[2] != len(classes):
        raise ValueError(f"scores of shape {stacked.shape[1:]} do not match {len(ids)} ids and {len(classes)} classes")
    predicted = stacked >= threshold
    votes = predicted.sum(axis=0)  # (N, C)
    split = ((votes > 0) & (votes < len(methods))).sum(axis=1)

    def jaccard(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        union = (a | b).sum(-1)
        return np.where(union > 0, (a & b).sum(-1) / np.maximum(union, 1), 1.0)

    pairs = [(a, b) for a in range(len(methods)) for b in range(a + 1, len(methods))]
    distance = np.mean([1 - jaccard(predicted[a], predicted[b]) for a, b in pairs], axis=0)
    order = np.lexsort((-distance, -split))[:top]
    images = []
    for i in order:
        shown = set(np.flatnonzero(votes[i] > 0))
        truth = [] if targets is None else [classes[c] for c in np.flatnonzero(targets[i] == 1)]
        if targets is not None:
            shown |= set(np.flatnonzero(targets[i] == 1))
        images.append({
            "id": str(ids[i]), "split_labels": int(split[i]), "jaccard_distance": float(distance[i]),
            "true": truth if targets is not None else None,
            "predicted": {m: [classes[c] for c in np.flatnonzero(predicted[k, i])] for k, m in enumerate(methods)},
            "scores": {m: {classes[c]: float(stacked[k, i, c]) for c in sorted(shown)} for k, m in enumerate(methods)},
        })
    pairwise = {a: {b: float(jaccard(predicted[i], predicted[j]).mean()) for j, b in enumerate(methods)}
                for i, a in enumerate(methods)}
    return {"threshold": threshold, "methods": methods, "num_images": len(ids),
            "agree_all": float((split == 0).mean()), "pairwise_jaccard": pairwise, "images": images}
