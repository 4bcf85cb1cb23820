"""The app's "What the models see": tables and figures of what the runs measured, and the graph's
effect on one photo.

Everything over the evaluation split is read from the shipped files, never recomputed: each
model's ``eval.json`` "diagnostics" (``mlc.diagnostics``: map localisation, flip consistency, the
identity-graph ablation) and the group's ``report.json`` "disagreement". Only ``graph_effect`` runs
the models, on the visitor's photo.
"""
from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure
from PIL import Image

from mlc.diagnostics_record import num, pct_value, read_diagnostics
from mlc.serving.errors import RequestError
from mlc.serving.maps import display_array
from mlc.serving.model_set import ModelSet
from mlc.serving.predict import method_colour
from mlc.serving.text import md

SEEING_READING = (
    "Measured once on the evaluation split (nothing here is recomputed). **Pointing game**: how often the "
    "maximum of a method's map for a present class lies on an object of that class (its box, within 3% of the "
    "image's side); **box energy**: how much of the map lies inside those boxes. A **random map** and a "
    "**centre map** (always looking at the middle) show what chance and the photographer's framing give. "
    "**Flip cosine**: whether the map of the mirrored photo mirrors the map of the photo (1 = exactly); "
    "**scale cosine**: the same for the photo shrunk as G-CAM trains (the model's own second scale). "
    "**L_A**: G-CAM's loss, the mean squared difference of those two maps in the map's own units, so "
    "compare it between the CAM methods only. **No graph**: the same trained model with its label graph "
    "removed (GCN: identity; GGNN: no edges), not retrained: the difference is what the graph contributes to "
    "this trained model (a model trained without a graph could do better than this ablation). "
    "**Deletion / insertion** (Petsiuk et al. 2018): the class probability as the map's most relevant pixels "
    "are blurred away (deletion: a faithful map makes it fall fast, low area under the curve) or revealed "
    "from a blurred photo (insertion: rises fast, high area), on a seeded subset of present pairs; they "
    "measure whether the map points at what the model uses, not whether it points at the object."
)
DATA_ROOT_ENV = "MLC_DATA_ROOT"  # the operator's dataset folder: shows the disputed images themselves
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def _diagnostics(model_set: ModelSet) -> dict[str, dict]:
    """Each method's diagnostics record, read once through ``mlc.diagnostics_record``."""
    records = {name: read_diagnostics(m.evaluation) for name, m in model_set.methods.items()}
    return {name: record.to_dict() for name, record in records.items() if record is not None}


def _pct(x: Any) -> float:
    value = pct_value(x)
    return np.nan if value is None else value


def seeing_table(model_set: ModelSet) -> tuple[str, pd.DataFrame | None]:
    """One row per method (and the random / centre maps): pointing game, box energy, flip
    cosine, L_A, mAP with and without the label graph."""
    diag = _diagnostics(model_set)
    if not diag:
        return ("These models' eval.json files carry no diagnostics (run `python -m train evaluate --merge`, "
                "or train them again), so there is nothing to show here."), None
    rows, reference = [], None
    for name, d in diag.items():
        loc = d.get("localization") or {}
        method = loc.get("method") or {}
        reference = reference or (loc if "random" in loc else None)
        graph = d.get("graph") or {}
        rows.append({
            "method": name, "map": d.get("map"), "pointing game (%)": _pct(method.get("pointing")),
            "box energy (%)": _pct(method.get("energy")),
            "flip cosine": np.nan if d["flip"].get("cosine") is None else round(d["flip"]["cosine"], 3),
            "L_A (flip)": np.nan if d["flip"].get("la") is None else float(f"{d['flip']['la']:.3g}"),
            "scale cosine": np.nan if (d.get("scale") or {}).get("cosine") is None else round(d["scale"]["cosine"], 3),
            "L_A (scale)": np.nan if (d.get("scale") or {}).get("la") is None else float(f"{d['scale']['la']:.3g}"),
            "pointing game, Grad-CAM (%)": _pct((loc.get("grad_cam") or {}).get("pointing")),
            **_faithfulness_cells(d.get("faithfulness"), "own"),
            "map depends on the model": _depends(d.get("sanity")),
            "mAP (%)": _pct(graph.get("map")) if graph else np.nan,
            "mAP, no graph (%)": _pct(graph.get("map_identity")) if graph else np.nan,
            "graph's share (pp)": round(100 * graph["difference"], 2) if graph else np.nan,
        })
    if reference:
        for source, label in (("random", "random map"), ("centre", "centre map")):
            faith = next((d.get("faithfulness") for d in diag.values() if d.get("faithfulness")), None)
            rows.append({"method": label, "map": "-", "pointing game (%)": _pct(reference[source].get("pointing")),
                         "box energy (%)": _pct(reference[source].get("energy")), **_faithfulness_cells(faith, source)})
    first = next(iter(diag.values()))
    where = (f"{first.get('num_images', '?')} evaluation images, {first.get('input_size', '?')} px input. "
             if reference else "The evaluation data had no object boxes, so there is no localisation. ")
    return where + SEEING_READING, pd.DataFrame(rows)


def _faithfulness_cells(faithfulness: Any, source: str) -> dict[str, float]:
    """Mean deletion and insertion AUC of one map (``own``, ``grad-cam``, ``random``, ``centre``)."""
    entry = ((faithfulness or {}).get("maps") or {}).get(source) or {}
    cell = lambda kind: ((entry.get(kind) or {}).get("auc") or {}).get("value")  # noqa: E731
    return {"deletion AUC (lower: faithful)": np.nan if cell("deletion") is None else round(cell("deletion"), 3),
            "insertion AUC (higher: faithful)": np.nan if cell("insertion") is None else round(cell("insertion"), 3)}


def _depends(sanity: Any) -> str | None:
    own = ((sanity or {}).get("explainers") or {}).get("own") or {}
    verdict = own.get("depends_on_model")
    return None if verdict is None else ("yes" if verdict else "no")


def sanity_lines(model_set: ModelSet) -> str:
    """One reading per method of the sanity checks (Adebayo et al. 2018), from eval.json."""
    lines = []
    for name, d in _diagnostics(model_set).items():
        own = ((d.get("sanity") or {}).get("explainers") or {}).get("own")
        if not own:
            continue
        rand, disc = own.get("model_randomization") or {}, own.get("class_discrimination") or {}
        depends = own.get("depends_on_model")
        lines.append(f"- **{md(name)}** ({md(own.get('kind', '?'))}): map depends on the model: "
                     f"**{'yes' if depends else 'no' if depends is not None else 'n/a'}** (median |Spearman| with "
                     f"its classifier re-drawn {num(rand.get('median_abs'), '+.2f')}); present vs absent class: median "
                     f"Spearman {num(disc.get('median'), '+.2f')} (near 1: the map hardly depends on the class)")
    if not lines:
        return ""
    return ("**Sanity checks** (Adebayo et al. 2018; a faithful map changes when the model's classifier is "
            "re-drawn, and differs between classes):\n" + "\n".join(lines))


def has_faithfulness(model_set: ModelSet) -> bool:
    return any(d.get("faithfulness") for d in _diagnostics(model_set).values())


def faithfulness_figure(model_set: ModelSet) -> Figure | None:
    """Deletion curves (the class probability as the most relevant pixels are blurred away) of each
    method's own map, with the random and centre maps: lower and earlier is more faithful."""
    diag = {n: d["faithfulness"] for n, d in _diagnostics(model_set).items() if d.get("faithfulness")}
    if not diag:
        return None
    fig = Figure(figsize=(9, 3.4), layout="constrained")
    for k, kind in enumerate(("deletion", "insertion")):
        ax = fig.add_subplot(1, 2, k + 1)
        first = next(iter(diag.values()))
        x = [100 * f for f in first["fractions"]]
        for name, faith in diag.items():
            ax.plot(x, faith["maps"]["own"][kind]["curve"], marker="o", markersize=3, color=method_colour(name), label=name)
        for source, style in (("random", ":"), ("centre", "--")):
            if source in first["maps"]:
                ax.plot(x, first["maps"][source][kind]["curve"], color="black", linestyle=style, label=f"{source} map")
        ax.set_xlabel(f"pixels {'blurred' if kind == 'deletion' else 'revealed'} (%)")
        ax.set_ylabel("class probability")
        ax.set_title(f"{kind} ({'lower' if kind == 'deletion' else 'higher'} is more faithful)")
        ax.grid(alpha=0.3)
        if k == 0:
            ax.legend(fontsize=7)
    return fig


def seeing_figure(table: pd.DataFrame) -> Figure:
    """Pointing game and box energy per method, with the random and centre maps as lines."""
    fig = Figure(figsize=(9, 3.4), layout="constrained")
    methods = table[~table.method.isin(["random map", "centre map"])]
    baselines = table[table.method.isin(["random map", "centre map"])].set_index("method")
    for k, column in enumerate(("pointing game (%)", "box energy (%)")):
        ax = fig.add_subplot(1, 2, k + 1)
        ax.bar(methods.method, methods[column], color=[method_colour(m) for m in methods.method])
        for label, style in (("random map", ":"), ("centre map", "--")):
            if label in baselines.index and not np.isnan(baselines.loc[label, column]):
                ax.axhline(baselines.loc[label, column], color="black", linestyle=style, linewidth=1, label=label)
        ax.set_ylim(0, 100)
        ax.set_title(column)
        ax.tick_params(axis="x", labelrotation=30)
        ax.grid(axis="y", alpha=0.3)
        if k == 0:
            ax.legend(fontsize=8, loc="lower left")
    return fig


def graph_table(model_set: ModelSet) -> pd.DataFrame | None:
    """AP change per class (pp) that each graph method's label graph brings: with minus without."""
    columns = {}
    for name, d in _diagnostics(model_set).items():
        graph = d.get("graph")
        if graph:
            classes = model_set.methods[name].model.classes
            ap, ap_id = graph["per_class"]["ap"], graph["per_class"]["ap_identity"]
            columns[name] = pd.Series([np.nan if a is None or b is None else round(100 * (a - b), 2)
                                       for a, b in zip(ap, ap_id)], index=classes)
    return pd.DataFrame(columns) if columns else None


def graph_figure(table: pd.DataFrame) -> Figure:
    """Per-class AP change from the graph, one row of cells per graph method (red: the graph helps)."""
    fig = Figure(figsize=(11, 0.7 + 0.45 * len(table.columns)), layout="constrained")
    ax = fig.add_subplot()
    values = table.T.to_numpy(dtype=float)
    limit = max(0.5, float(np.nanmax(np.abs(values))) if np.isfinite(values).any() else 0.5)
    image = ax.imshow(values, cmap="RdBu_r", vmin=-limit, vmax=limit, aspect="auto")
    ax.set_xticks(range(len(table.index)), table.index, rotation=40, ha="right", fontsize=8)
    ax.set_yticks(range(len(table.columns)), table.columns)
    for (r, c), v in np.ndenumerate(values):
        if np.isfinite(v):
            ax.text(c, r, f"{v:+.1f}", ha="center", va="center", fontsize=7)
    ax.set_title("AP with the label graph minus AP without it (pp), per class")
    fig.colorbar(image, ax=ax, label="pp", shrink=0.9)
    return fig


# -- where the methods disagree ---------------------------------------------------------------------
def disagreement_table(model_set: ModelSet) -> tuple[str, pd.DataFrame | None, list[dict]]:
    """(status, one row per disputed image, the report's entries) from report.json."""
    dis = (model_set.report or {}).get("disagreement") or {}
    images = dis.get("images") or []
    if not images:
        return "No report.json with a disagreement analysis was shipped with these models.", None, []
    methods = dis.get("methods") or []
    rows = []
    for im in images:
        row = {"image": str(im.get("id")), "labels split": im.get("split_labels"),
               "true labels": ", ".join(im.get("true") or []) or "-"}
        for m in methods:
            row[m] = ", ".join(im["predicted"].get(m) or []) or "-"
        rows.append(row)
    status = (f"On {100 * dis['agree_all']:.1f}% of the {dis['num_images']} evaluation images all "
              f"{len(methods)} methods predict the same labels (p >= {dis['threshold']}). The {len(rows)} images below "
              "are where they disagree most (number of labels on which they split).")
    return status, pd.DataFrame(rows), images


@lru_cache(maxsize=4)
def _image_index(root: str) -> dict[str, str]:
    """File stem -> path of the images under the operator's dataset folder (walked once)."""
    index: dict[str, str] = {}
    for folder, _, files in os.walk(root):
        for name in files:
            stem, suffix = os.path.splitext(name)
            if suffix.lower() in IMAGE_SUFFIXES:
                index.setdefault(stem, os.path.join(folder, name))
                if stem.isdigit():  # COCO file names pad the numeric id with zeros
                    index.setdefault(str(int(stem)), os.path.join(folder, name))
    return index


@lru_cache(maxsize=64)
def _thumbnail(path: str) -> np.ndarray:
    """A disputed image at 320 px, decoded once (the Analysis tab shows the same ones every time)."""
    with Image.open(path) as picture:
        return display_array(picture.convert("RGB"), side=320)


def disagreement_gallery(images: list[dict], data_root: str | None = None) -> tuple[list[tuple[np.ndarray, str]], str]:
    """The disputed images themselves, when the operator points ``MLC_DATA_ROOT`` at the dataset.
    Ids are only looked up among the files found there, never joined into a path."""
    root = data_root if data_root is not None else os.environ.get(DATA_ROOT_ENV)
    if not images:
        return [], ""
    if not root or not Path(root).is_dir():
        return [], (f"Set {DATA_ROOT_ENV} to the dataset folder on the server to see these images here; "
                    "the table lists their ids.")
    index = _image_index(str(Path(root).resolve()))
    items, missing = [], 0
    for im in images:
        path = index.get(str(im.get("id")))
        if path is None:
            missing += 1
            continue
        items.append((_thumbnail(path), f"{im['id']}: {im.get('split_labels')} labels split"))
    note = f" {missing} of the images were not found in the dataset folder." if missing else ""
    return items, note


# -- the graph's effect on one photo -----------------------------------------------------------------
def graph_effect(model_set: ModelSet, image: Image.Image, per_method: int = 3) -> tuple[str, pd.DataFrame]:
    """Each graph method's class scores with its label graph and without it (no retraining): its
    ``per_method`` largest changes, largest first, so every graph method shows which labels its
    graph pushed up or down on this photo."""
    model_set.require_models()
    graphs = [n for n, m in model_set.methods.items() if m.model.has_label_graph]
    if not graphs:
        raise RequestError("None of the loaded methods has a label graph.")
    rows = []
    with model_set.session(), torch.no_grad():
        features = model_set.features(model_set.inputs(image))
        for name in graphs:
            model = model_set.methods[name].model
            with_graph = torch.sigmoid(model.forward_head(features[name]).logits[0]).double().cpu().numpy()
            with model.identity_graph():
                without = torch.sigmoid(model.forward_head(features[name]).logits[0]).double().cpu().numpy()
            for c, cls in enumerate(model.classes):
                rows.append({"method": name, "class": cls, "with graph": round(with_graph[c], 3),
                             "without graph": round(without[c], 3), "change": round(with_graph[c] - without[c], 3)})
    table = pd.DataFrame(rows)
    order = table.change.abs().sort_values(ascending=False, kind="stable").index
    biggest = table.loc[order[0]]
    table = table.loc[order].groupby("method", sort=False).head(per_method)
    table = table.sort_values("method", key=lambda m: m.map(graphs.index), kind="stable").reset_index(drop=True)
    direction = "raised" if biggest.change > 0 else "lowered"
    status = (f"The same trained heads with and without their label graph on this photo, the {per_method} largest "
              f"changes per method. The largest effect: **{md(biggest['method'])}**'s graph {direction} "
              f"**{md(biggest['class'])}** from {biggest['without graph']:.2f} to {biggest['with graph']:.2f}. "
              "The heads were trained with their graph, so removing it also moves scores the graph never "
              "reasoned about (most for ggnn, whose every node state changes).")
    return status, table
