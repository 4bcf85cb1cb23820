"""The analysis views: per-class AP and seeds from the shipped evaluation, the label graph, the
t-SNE of the classifiers; each figure rendered once per model set and kept in its memo."""
from __future__ import annotations

import tempfile
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Callable, Mapping

import matplotlib
import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import FancyArrowPatch

from mlc import graph as label_graph
from mlc.data.voc import VOC_CLASS_GROUPS
from mlc.serving.errors import RequestError
from mlc.serving.model_set import ModelSet
from mlc.serving.predict import method_colour
from mlc.stats import LabelStatistics


GROUP_COLORS: dict[str, str] = {
    "vehicles": "tab:blue", "animals": "tab:orange", "indoor objects": "tab:green", "person": "tab:red",
    "other": "tab:gray",
}


def seed_comparison(model_set: ModelSet) -> tuple[str, pd.DataFrame | None]:
    """Each variant's mAP over seeds and, for the graph variants, the paired bootstrap 95% interval
    of its difference from the baseline, from the shipped report.json (nothing recomputed)."""
    report = model_set.report or {}
    seeds, boot = report.get("seeds") or {}, report.get("bootstrap") or {}
    if not seeds:
        return "No report.json with seeds was shipped with these models, so differences have no error bars.", None
    comparisons = boot.get("comparisons") or {}
    finetune = report.get("finetune") or {}
    rows = []
    for variant, entry in seeds.items():
        m = entry.get("map") or {}
        spread = "" if m.get("std") is None else f" ± {100 * m['std']:.2f}"
        row = {"method": variant, "mAP (mean over seeds)": f"{100 * m['mean']:.2f}{spread}" if m.get("mean") is not None else "n/a",
               "seeds": m.get("n")}
        if variant in finetune:
            row["frozen backbone mAP"] = f"{100 * finetune[variant]['stage1_map']['mean']:.2f}"
        c = comparisons.get(variant)
        if c and not c.get("skipped"):
            row[f"vs {boot.get('reference')} (pp, {100 * c['confidence']:.0f}% CI)"] = (
                f"{100 * c['difference']:+.2f} [{100 * c['low']:+.2f}, {100 * c['high']:+.2f}]")
            row["verdict"] = {"better": "better (interval above 0)", "worse": "worse (interval below 0)"}.get(
                c["verdict"], "not distinguishable (interval holds 0)")
        rows.append(row)
    status = (f"Over {max((r['seeds'] or 0) for r in rows)} seeds; the interval resamples the "
              f"{report.get('num_images', '?')} evaluation images ({boot.get('num_samples', '?')} paired bootstrap "
              "resamples): a difference is real only when its interval excludes 0.")
    return status, pd.DataFrame(rows)


def per_class_ap(model_set: ModelSet) -> pd.DataFrame:
    """AP (%) per class (rows) and method (columns) from each eval.json, mAP as the last row."""
    columns = {}
    for name, m in model_set.methods.items():
        if m.evaluation is not None:
            metrics = m.evaluation["metrics"]
            classes = metrics.get("classes") or m.model.classes
            values = [*metrics["ap"], metrics.get("map")]
            columns[name] = pd.Series([np.nan if v is None else 100 * v for v in values], index=[*classes, "mAP"])
    if not columns:
        raise RequestError("No loaded model has an eval.json, so there is no per-class AP to show.")
    classes = list(dict.fromkeys(c for s in columns.values() for c in s.index if c != "mAP"))
    return pd.DataFrame(columns, index=[*classes, "mAP"]).round(1)


def _grouped_bars(ax, table: pd.DataFrame, colors: Mapping[str, str]) -> None:
    """Bars per row (x) and column (colour), side by side within a row."""
    methods = list(table.columns)
    width = 0.8 / max(1, len(methods))
    x = np.arange(len(table))
    for i, name in enumerate(methods):
        ax.bar(x + (i - (len(methods) - 1) / 2) * width, table[name].to_numpy(dtype=float), width,
               label=name, color=colors.get(name))
    ax.set_xticks(x, [str(c) for c in table.index], rotation=30, ha="right")
    ax.grid(axis="y", alpha=0.3)


def ap_chart(table: pd.DataFrame) -> Figure:
    fig = Figure(figsize=(12, 4), layout="constrained")
    ax = fig.add_subplot()
    _grouped_bars(ax, table, {m: method_colour(m) for m in table.columns})
    ax.set_ylabel("AP (%)")
    ax.set_ylim(0, 100)
    ax.set_title("Per-class AP (last group: mAP)")
    fig.legend(fontsize=8, ncols=len(table.columns), loc="outside upper center")
    return fig


def label_statistics(model_set: ModelSet, method: str | None) -> tuple[str, LabelStatistics]:
    """Training-split label statistics saved with a model (the first that has them by default)."""
    names = [method] if method else model_set.names
    for name in names:
        stats = model_set.method(name).model.label_stats
        if stats:
            return name, LabelStatistics.from_dict(stats)
    raise RequestError(f"{method or 'No loaded model'} has no label statistics in its config.")


def cooccurrence_heatmap(stats: LabelStatistics) -> Figure:
    """P(j | i) = n_ij / n_i, row i conditioning on class i."""
    prob = label_graph.conditional_probability(stats.counts, stats.cooccurrence)
    fig = Figure(figsize=(6.4, 5.6), layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(prob, cmap="viridis", vmin=0, vmax=1)
    ticks = np.arange(len(stats.classes))
    ax.set_xticks(ticks, stats.classes, rotation=90, fontsize=7)
    ax.set_yticks(ticks, stats.classes, fontsize=7)
    ax.set_xlabel("j")
    ax.set_ylabel("i")
    ax.set_title(f"P(j | i) over {stats.num_images} training images")
    fig.colorbar(image, ax=ax, shrink=0.8)
    return fig


def class_group(name: str) -> str:
    return next((g for g, members in VOC_CLASS_GROUPS.items() if name in members), "other")


def reweighted_graph(stats: LabelStatistics, tau: float, p: float) -> tuple[np.ndarray, int]:
    """(A'' of ML-GCN / G-CAM for this tau and p, number of directed edges of the thresholded A')."""
    binary = label_graph.threshold_adjacency(label_graph.conditional_probability(stats.counts, stats.cooccurrence), tau)
    return label_graph.reweight_adjacency(binary, p), label_graph.count_edges(binary)


def graph_figure(stats: LabelStatistics, weights: np.ndarray, tau: float, p: float, edges: int) -> Figure:
    """Nodes on a circle, one curved arrow i -> j per edge, width by its weight A''_ij."""
    n = len(stats.classes)
    angle = 2 * np.pi * np.arange(n) / max(n, 1)
    xy = np.stack([np.cos(angle), np.sin(angle)], axis=1)
    fig = Figure(figsize=(6.4, 6.4), layout="constrained")
    ax = fig.add_subplot()
    off_diagonal = weights * (1 - np.eye(n))
    top = float(off_diagonal.max()) or 1.0
    for i, j in zip(*np.nonzero(off_diagonal)):
        ax.add_patch(FancyArrowPatch(
            xy[i], xy[j], arrowstyle="-|>", mutation_scale=9, connectionstyle="arc3,rad=0.12",
            linewidth=0.4 + 3.0 * off_diagonal[i, j] / top, color="tab:blue", alpha=0.55, shrinkA=7, shrinkB=7,
        ))
    colors = [GROUP_COLORS[class_group(c)] for c in stats.classes]
    ax.scatter(xy[:, 0], xy[:, 1], s=90, c=colors, zorder=3, edgecolors="black", linewidths=0.5)
    for (x, y), name in zip(xy, stats.classes):
        align = "left" if x > 0.3 else "right" if x < -0.3 else "center"
        ax.text(1.09 * x, 1.09 * y, name, ha=align, va="center", fontsize=8)
    ax.legend(handles=[Line2D([], [], marker="o", linestyle="", color=c, label=g) for g, c in GROUP_COLORS.items()
                       if g in {class_group(n) for n in stats.classes}], fontsize=7, loc="lower left")
    ax.set_xlim(-1.35, 1.35)
    ax.set_ylim(-1.35, 1.35)
    ax.set_aspect("equal")
    ax.axis("off")
    ax.set_title(f"A'' (tau={tau:.2f}, p={p:.2f}): {edges} directed edges\nwidth = weight; self-loops (1-p) not drawn",
                 fontsize=10)
    return fig


def tsne_methods(model_set: ModelSet) -> list[str]:
    """The loaded variants whose classifiers act on pooled features (``has_cam``): their rows compare."""
    return [name for name, m in model_set.methods.items() if m.model.has_cam]


def classifier_embedding(model_set: ModelSet) -> pd.DataFrame:
    """t-SNE of the classifiers of every loaded variant with one over pooled features (learned, as the
    baseline's, or produced by a GCN, as ML-GCN's and G-CAM's).

    Rows are L2-normalised first: the methods' weights differ in scale, and only direction matters
    for which class a pooled feature scores highest.
    """
    from sklearn.manifold import TSNE

    rows, vectors = [], []
    for name in tsne_methods(model_set):
        model = model_set.methods[name].model
        with torch.no_grad():
            weights = model.classifier()[0].float().cpu().numpy()
        vectors.append(weights / np.maximum(np.linalg.norm(weights, axis=1, keepdims=True), 1e-12))
        rows += [{"method": name, "label": c, "group": class_group(c)} for c in model.classes]
    if not vectors:
        raise RequestError("The t-SNE needs a model whose classifier acts on pooled features (has a CAM); none is loaded.")
    data = np.concatenate(vectors)
    if len(data) < 3:
        raise RequestError("The t-SNE needs at least three classifiers.")
    points = TSNE(n_components=2, perplexity=min(5.0, len(data) - 1.0), init="pca", random_state=0).fit_transform(data)
    return pd.DataFrame(rows).assign(x=points[:, 0], y=points[:, 1])


def tsne_figure(embedding: pd.DataFrame) -> Figure:
    """Colour = class group, marker = method, every point labelled with its class."""
    markers = dict(zip(embedding.method.unique(), ("o", "s", "^", "D", "v", "P", "X")))
    fig = Figure(figsize=(8, 6), layout="constrained")
    ax = fig.add_subplot()
    for label, part in embedding.groupby("label", sort=False):  # one class's classifiers, joined
        if len(part) > 1:
            ax.plot(part.x, part.y, color="0.75", linewidth=0.6, zorder=1)
    for method, part in embedding.groupby("method", sort=False):
        ax.scatter(part.x, part.y, c=[GROUP_COLORS[g] for g in part.group], marker=markers[method],
                   s=60, edgecolors="black", linewidths=0.5, zorder=2)
    # each class named once, beside the centre of its points, on a white box so labels stay legible
    centres = embedding.groupby("label", sort=False)[["x", "y"]].mean()
    for label, row in centres.iterrows():
        ax.annotate(label, (row.x, row.y), fontsize=7, xytext=(4, 4), textcoords="offset points", zorder=3,
                    bbox=dict(boxstyle="round,pad=0.15", facecolor="white", edgecolor="none", alpha=0.8))
    handles = [Line2D([], [], marker=markers[m], linestyle="", color="black", label=m)
               for m in embedding.method.unique()]
    handles += [Line2D([], [], marker="o", linestyle="", color=c, label=g) for g, c in GROUP_COLORS.items()
                if g in set(embedding.group)]
    ax.legend(handles=handles, fontsize=8, loc="best")
    ax.set_title("t-SNE of the classifiers over pooled features (learned, or produced by a GCN)")
    ax.set_xticks([])
    ax.set_yticks([])
    return fig


def figure(model_set: ModelSet, key: tuple, make: Callable[[], Figure], keep: int = 64) -> str:
    """A figure of this model set rendered to PNG once and then served from disk: the analysis
    views are fixed per model set (and per slider value), and rendering plus Gradio's encoding of
    a matplotlib figure cost seconds per request. Keeps the ``keep`` most recent per kind."""
    with model_set.memo_lock:
        cache = model_set.memo.setdefault("figures", OrderedDict())
        folder = model_set.memo.setdefault("figure_dir", tempfile.mkdtemp(prefix="mlc-figures-"))
        if key in cache and Path(cache[key]).is_file():
            cache.move_to_end(key)
            return cache[key]
    path = str(Path(folder) / f"{abs(hash(key)):x}.png")
    with matplotlib.rc_context({"text.parse_math": False}):  # a "$" in a class name is text, not math
        make().savefig(path, dpi=100)
    with model_set.memo_lock:
        cache[key] = path
        same_kind = [k for k in cache if k[0] == key[0]]
        for old in same_kind[:-keep]:
            Path(cache.pop(old)).unlink(missing_ok=True)
    return path


def tsne(model_set: ModelSet) -> pd.DataFrame:
    """2-D t-SNE of the classifiers, computed once per model set (its classifiers are fixed once loaded)."""
    with model_set.memo_lock:
        lock = model_set.memo.setdefault("tsne_lock", threading.Lock())
    with lock:
        if "tsne" not in model_set.memo:
            model_set.memo["tsne"] = classifier_embedding(model_set)
        return model_set.memo["tsne"]

