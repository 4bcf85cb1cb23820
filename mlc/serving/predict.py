"""The predict view: every method's probabilities, the labels each predicts, and their HTML chart and chips."""
from __future__ import annotations

import html
from typing import Mapping

import pandas as pd
import torch
from PIL import Image

from mlc.serving.model_set import ModelSet


def method_colour(name: str) -> str:
    """The variant's own plot colour (``MultiLabelModel.colour``); grey for a name not registered."""
    from mlc.models import get_model_class

    try:
        return get_model_class(name).colour
    except ValueError:
        return "tab:gray"


def predict_probabilities(model_set: ModelSet, image: Image.Image) -> pd.DataFrame:
    """(classes x methods) sigmoid scores plus their mean, sorted by the mean (NaN: class unknown to a model)."""
    model_set.require_models()
    with model_set.session(), torch.no_grad():
        features = model_set.features(model_set.inputs(image))
        logits = {name: m.model.forward_head(features[name]).logits for name, m in model_set.methods.items()}
        table = _score_table(model_set, logits)
    table["mean"] = table.mean(axis=1)
    return table.sort_values("mean", ascending=False, kind="stable")


def _score_table(model_set: ModelSet, logits: Mapping[str, torch.Tensor]) -> pd.DataFrame:
    """(classes x methods) probabilities of the first image; NaN where a model lacks the class."""
    columns = {
        name: pd.Series(torch.sigmoid(x)[0].double().cpu().numpy(), index=model_set.methods[name].model.classes)
        for name, x in logits.items()
    }
    return pd.DataFrame(columns, index=model_set.classes)


def predicted_labels(table: pd.DataFrame, threshold: float, top_k: int) -> dict[str, list[str]]:
    """Per method: classes scoring >= threshold among its own top-k (the papers' top-k protocol)."""
    out = {}
    for name in table.columns.drop("mean"):
        top = table[name].dropna().sort_values(ascending=False, kind="stable").head(max(1, int(top_k)))
        out[name] = [str(c) for c, s in top.items() if s >= threshold]
    return out


def labels_html(labels: Mapping[str, list[str]], threshold: float, top_k: int) -> str:
    """The predicted labels at a glance: one row per method, one chip per label; a label that only
    some methods predict is marked, and a method that predicts nothing says so."""
    methods = list(labels)
    every = set.intersection(*(set(v) for v in labels.values())) if labels else set()
    some = set().union(*(set(v) for v in labels.values())) if labels else set()
    rows = []
    for method in methods:
        chips = "".join(
            f'<span class="mlc-chip{" mlc-differs" if c not in every else ""}" '
            f'title="{"predicted by every method" if c in every else "not predicted by every method"}">'
            f'{html.escape(c)}{" *" if c not in every else ""}</span>'
            for c in labels[method]
        ) or '<span class="mlc-none">nothing above the threshold</span>'
        rows.append(f"<tr><th>{html.escape(method)}</th><td>{chips}</td></tr>")
    differ = sorted(some - every)
    summary = (f"All methods agree on: <b>{html.escape(', '.join(sorted(every)) or 'nothing')}</b>. "
               + (f"They differ on: <b>{html.escape(', '.join(differ))}</b> (marked *)." if differ
                  else "No method predicts anything the others do not."))
    style = ("<style>.mlc-labels{border-collapse:collapse;width:100%}.mlc-labels th{text-align:left;"
             "padding:4px 8px;white-space:nowrap;vertical-align:top}.mlc-labels td{padding:4px}"
             ".mlc-chip{display:inline-block;margin:2px;padding:1px 8px;border-radius:10px;"
             "background:#dbeafe;color:#1e3a8a;white-space:nowrap}.mlc-differs{background:#fef3c7;color:#92400e;"
             "border:1px dashed #d97706}.mlc-none{color:#6b7280;font-style:italic}</style>")
    return (f'{style}<div class="mlc-labels-box"><p>Labels with score &ge; {threshold:.2f} within each method\'s '
            f"top {int(top_k)}. {summary}</p><table class=\"mlc-labels\">{''.join(rows)}</table></div>")


def probability_bars_html(table: pd.DataFrame, top_k: int, threshold: float) -> str:
    """The top-k classes (by mean score) as plain HTML bars, one per method, with the threshold
    marked: built in well under a millisecond (a matplotlib chart cost 300 ms per request), sharp
    at any width, and readable on a phone."""
    top = table.drop(columns="mean").head(max(1, int(top_k)))
    legend = "".join(f'<span class="mlc-key"><i style="background:{_css_colour(m)}"></i>{html.escape(m)}</span>'
                     for m in top.columns)
    rows = []
    for cls, scores in top.iterrows():
        bars = "".join(
            f'<div class="mlc-bar" title="{html.escape(m)}: {v:.3f}"><i style="width:{100 * v:.1f}%;'
            f'background:{_css_colour(m)}"></i><span>{v:.2f}</span></div>'
            for m, v in scores.items() if v == v  # NaN: the method lacks the class
        )
        rows.append(f'<div class="mlc-row"><div class="mlc-class">{html.escape(str(cls))}</div>'
                    f'<div class="mlc-bars" style="--t:{100 * threshold:.1f}%">{bars}</div></div>')
    style = ("<style>.mlc-chart{font-size:13px}.mlc-row{display:flex;gap:8px;margin:6px 0;align-items:center}"
             ".mlc-class{width:96px;flex:none;text-align:right;overflow-wrap:anywhere}.mlc-bars{flex:1;position:relative}"
             ".mlc-bars:after{content:'';position:absolute;top:0;bottom:0;left:var(--t);border-left:1px dashed #111}"
             ".mlc-bar{position:relative;height:11px;margin:1px 0;background:#f3f4f6}.mlc-bar i{display:block;height:100%}"
             ".mlc-bar span{position:absolute;right:2px;top:-2px;font-size:10px;color:#374151}"
             ".mlc-key{margin-right:10px;white-space:nowrap}.mlc-key i{display:inline-block;width:10px;height:10px;"
             "margin-right:4px}</style>")
    return (f'{style}<div class="mlc-chart"><div>Top {len(top)} classes by mean score; dashed line: threshold '
            f"{threshold:.2f}. {legend}</div>{''.join(rows)}</div>")


def _css_colour(method: str) -> str:
    from matplotlib.colors import to_hex

    return to_hex(method_colour(method))
