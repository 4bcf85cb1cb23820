"""The predict view: every method's probabilities, the labels each predicts, and their HTML chart and chips."""
from __future__ import annotations

import html
from dataclasses import dataclass
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


@dataclass
class Prediction:
    """One photo through every method: the probability table and each method's logits."""

    table: pd.DataFrame  # (classes x methods) probabilities plus "mean", sorted by the mean
    logits: dict[str, torch.Tensor]  # per method, (1, C) on the CPU


def predict(model_set: ModelSet, image: Image.Image) -> Prediction:
    """Every method's scores on one photo, its shared backbone run once per input."""
    model_set.require_models()
    with model_set.session(), torch.no_grad():
        features = model_set.features(model_set.inputs(image))
        logits = {name: m.model.forward_head(features[name]).logits.float().cpu() for name, m in model_set.methods.items()}
        table = _score_table(model_set, logits)
    table["mean"] = table.mean(axis=1)
    return Prediction(table.sort_values("mean", ascending=False, kind="stable"), logits)


def predict_probabilities(model_set: ModelSet, image: Image.Image) -> pd.DataFrame:
    """(classes x methods) sigmoid scores plus their mean, sorted by the mean (NaN: class unknown to a model)."""
    return predict(model_set, image).table


def class_thresholds(model_set: ModelSet, threshold: float | None) -> dict[str, dict[str, float]]:
    """Per method, the threshold of each class: ``threshold`` for all when given (the slider), else
    the method's per-class thresholds tuned on its selection split (0.5 where it has none)."""
    out = {}
    for name, m in model_set.methods.items():
        calibration = getattr(m.model, "calibration", None)
        if threshold is None and calibration is not None:
            out[name] = dict(zip(calibration.classes, calibration.thresholds))
        else:
            out[name] = {c: 0.5 if threshold is None else threshold for c in m.model.classes}
    return out


@dataclass
class OutOfClassNotice:
    """Whether most calibrated methods find the photo unlike their training images (``mlc.calibration``)."""

    flagged: list[str]  # the methods whose out-of-distribution score is over their threshold
    calibrated: list[str]  # the methods that have such a threshold

    @property
    def shown(self) -> bool:
        return bool(self.calibrated) and 2 * len(self.flagged) > len(self.calibrated)


def out_of_class(model_set: ModelSet, logits: Mapping[str, torch.Tensor]) -> OutOfClassNotice:
    flagged, calibrated = [], []
    for name, x in logits.items():
        calibration = getattr(model_set.methods[name].model, "calibration", None)
        if calibration is None:
            continue
        calibrated.append(name)
        if bool(calibration.ood_flags(x.numpy())[0]):
            flagged.append(name)
    return OutOfClassNotice(flagged, calibrated)


def _score_table(model_set: ModelSet, logits: Mapping[str, torch.Tensor]) -> pd.DataFrame:
    """(classes x methods) probabilities of the first image; NaN where a model lacks the class."""
    columns = {
        name: pd.Series(torch.sigmoid(x)[0].double().cpu().numpy(), index=model_set.methods[name].model.classes)
        for name, x in logits.items()
    }
    return pd.DataFrame(columns, index=model_set.classes)


def predicted_labels(table: pd.DataFrame, thresholds: float | Mapping[str, Mapping[str, float]],
                     top_k: int) -> dict[str, list[str]]:
    """Per method: classes scoring at least their threshold (one for all, or per method and class:
    ``class_thresholds``) among the method's own top-k (the papers' top-k protocol)."""
    out = {}
    for name in table.columns.drop("mean"):
        top = table[name].dropna().sort_values(ascending=False, kind="stable").head(max(1, int(top_k)))
        limit = (lambda c: thresholds) if isinstance(thresholds, (int, float)) else thresholds[name].get
        out[name] = [str(c) for c, s in top.items() if s >= (limit(c) if limit(c) is not None else 0.5)]
    return out


def labels_html(labels: Mapping[str, list[str]], threshold: float | None, top_k: int) -> str:
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
    rule = ("at least each method's per-class threshold (tuned on its selection split)" if threshold is None
            else f"&ge; {threshold:.2f}")
    return (f'{style}<div class="mlc-labels-box"><p>Labels with score {rule} within each method\'s '
            f"top {int(top_k)}. {summary}</p><table class=\"mlc-labels\">{''.join(rows)}</table></div>")


def probability_bars_html(table: pd.DataFrame, top_k: int, threshold: float | None) -> str:
    """The top-k classes (by mean score) as plain HTML bars, one per method, with the threshold
    marked: built in well under a millisecond (a matplotlib chart cost 300 ms per request), sharp
    at any width, and readable on a phone."""
    top = table.drop(columns="mean").head(max(1, int(top_k)))
    legend = "".join(f'<span class="mlc-key"><i style="background:{_css_colour(m)}"></i>{html.escape(m)}</span>'
                     for m in top.columns)
    line = "" if threshold is None else f' style="--t:{100 * threshold:.1f}%"'
    rows = []
    for cls, scores in top.iterrows():
        bars = "".join(
            f'<div class="mlc-bar" title="{html.escape(m)}: {v:.3f}"><i style="width:{100 * v:.1f}%;'
            f'background:{_css_colour(m)}"></i><span>{v:.2f}</span></div>'
            for m, v in scores.items() if v == v  # NaN: the method lacks the class
        )
        rows.append(f'<div class="mlc-row"><div class="mlc-class">{html.escape(str(cls))}</div>'
                    f'<div class="mlc-bars"{line}>{bars}</div></div>')
    style = ("<style>.mlc-chart{font-size:13px}.mlc-row{display:flex;gap:8px;margin:6px 0;align-items:center}"
             ".mlc-class{width:96px;flex:none;text-align:right;overflow-wrap:anywhere}.mlc-bars{flex:1;position:relative}"
             ".mlc-bars[style]:after{content:'';position:absolute;top:0;bottom:0;left:var(--t);border-left:1px dashed #111}"
             ".mlc-bar{position:relative;height:11px;margin:1px 0;background:#f3f4f6}.mlc-bar i{display:block;height:100%}"
             ".mlc-bar span{position:absolute;right:2px;top:-2px;font-size:10px;color:#374151}"
             ".mlc-key{margin-right:10px;white-space:nowrap}.mlc-key i{display:inline-block;width:10px;height:10px;"
             "margin-right:4px}</style>")
    rule = ("labels use each method's per-class thresholds" if threshold is None
            else f"dashed line: threshold {threshold:.2f}")
    return (f'{style}<div class="mlc-chart"><div>Top {len(top)} classes by mean score; {rule}. {legend}</div>'
            f"{''.join(rows)}</div>")


def _css_colour(method: str) -> str:
    from matplotlib.colors import to_hex

    return to_hex(method_colour(method))
