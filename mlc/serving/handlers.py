"""The app's endpoints: each validates its inputs, calls the views and turns failures into ``gr.Error``.

A handler takes the visitor's session (a ``gr.State``: their own model set, where the operator allows
loading, else None) as its last input; the operator's models serve everyone else.
"""
from __future__ import annotations

import functools
import json
import logging
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable

import gradio as gr
import pandas as pd

from mlc import serving
from mlc.serving import seeing
from mlc.serving.errors import RequestError
from mlc.serving.runtime import gpu_task
from mlc.serving.model_set import ModelSet

log = logging.getLogger("mlc.app")
MAX_VISITOR_SETS = 4  # visitors' own model sets held at once (opt-in loading); the least recently used is freed


def guarded(fn: Callable[..., tuple]) -> Callable[..., tuple]:
    """Turn a failure into ``gr.Error``: the UI shows the message, an API client gets an exception
    carrying it. A request's mistake is told as is; anything else is logged and told in general
    words (an exception's text may hold server paths)."""

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> tuple:
        try:
            return fn(*args, **kwargs)
        except RequestError as err:
            raise gr.Error(str(err), print_exception=False) from None
        except gr.Error:
            raise
        except Exception:  # the boundary: log, keep serving, tell no internals
            log.exception("request failed in %s", fn.__name__)
            raise gr.Error("The request failed on the server (it has been logged). The app is still running; "
                           "try again or with another image.", print_exception=False) from None

    return run


def _number(value: Any, name: str, low: float, high: float) -> float:
    """A slider value from the API, checked: a clear message instead of a type error deep inside."""
    if isinstance(value, bool) or value is None:
        raise RequestError(f"{name} must be a number between {low:g} and {high:g}, got {value!r}.")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise RequestError(f"{name} must be a number between {low:g} and {high:g}, got {str(value)[:40]!r}.") from None
    if not low <= number <= high:
        raise RequestError(f"{name} must be between {low:g} and {high:g}, got {number:g}.")
    return number


def _text(value: Any, name: str) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise RequestError(f"{name} must be a string, got {type(value).__name__}.")
    return value


def _records(table: pd.DataFrame, index_name: str) -> pd.DataFrame:
    """Index as the first column and missing values as None (JSON has no NaN)."""
    out = table.rename_axis(index_name).reset_index()
    return out.astype(object).where(out.notna(), None)


def _significant(value: float, digits: int = 4) -> float:
    """Round to significant digits: L_A spans orders of magnitude across map kinds."""
    return float(f"{value:.{digits}g}")


def _image(path: Any) -> serving.DecodedImage:
    if not path:
        raise RequestError("Upload an image first (or pick an example).")
    if not isinstance(path, str):
        raise RequestError("image must be an uploaded image file.")
    return serving.load_image(path)


class Handlers:
    """The app's endpoints over the operator's model set.

    The models are fixed at start-up. Where the operator opted in (``MLC_ALLOW_MODEL_LOADING=1``,
    for local use), ``load_models`` loads another source into the visitor's own session (a
    ``gr.State``, the last input of every handler): other visitors keep seeing the operator's models.
    """

    def __init__(self, model_set: ModelSet, allow_loading: bool = False, examples: list[Path] | None = None):
        self.models = model_set
        self.allow_loading = allow_loading
        self.examples = list(examples or [])  # the first opens the page, already predicted
        self._opening: tuple | None = None
        self._opening_lock = threading.Lock()
        self._visitor_sets: OrderedDict[int, ModelSet] = OrderedDict()  # live visitor sets, least recent first
        self._visitor_lock = threading.Lock()

    def models_of(self, session: ModelSet | None) -> ModelSet:
        if isinstance(session, ModelSet):
            with self._visitor_lock:
                if id(session) in self._visitor_sets:
                    self._visitor_sets.move_to_end(id(session))
            return session
        return self.models

    def keep_visitor_set(self, models: ModelSet, previous: ModelSet | None) -> None:
        """Hold at most ``MAX_VISITOR_SETS`` visitors' model sets: the least recently used beyond
        that is freed (its visitor is told to load again); a session's previous set is freed now."""
        with self._visitor_lock:
            if isinstance(previous, ModelSet):
                self._visitor_sets.pop(id(previous), None)
                previous.release()
            self._visitor_sets[id(models)] = models
            while len(self._visitor_sets) > MAX_VISITOR_SETS:
                self._visitor_sets.popitem(last=False)[1].release()

    def end_session(self, models: ModelSet | None) -> None:
        """A visitor's session ended (Gradio deletes its state): free its models at once."""
        if isinstance(models, ModelSet) and models is not self.models:
            with self._visitor_lock:
                self._visitor_sets.pop(id(models), None)
            models.release()

    @guarded
    @gpu_task(duration=30)  # ZeroGPU: a GPU for the model work; nothing changes on a CPU
    def predict(self, image: Any, threshold: Any = None, top_k: Any = 5, thresholds: Any = None,
                session: ModelSet | None = None) -> tuple:
        """Every method's per-class probabilities, a chart of the top-k classes, and the labels: at
        each method's per-class thresholds (tuned on its selection split) when ``threshold`` is None
        or ``thresholds`` is "per-class", else at ``threshold`` for every class. A notice replaces
        silent labels when most calibrated methods find the photo unlike the classes they know."""
        start = time.perf_counter()
        mode = _text(thresholds, "thresholds") or ("per-class" if threshold is None else "global")
        if mode not in ("per-class", "global"):
            raise RequestError(f"thresholds must be 'per-class' or 'global', got {mode[:20]!r}.")
        threshold = None if mode == "per-class" else _number(0.5 if threshold is None else threshold, "threshold", 0.0, 1.0)
        top_k = int(_number(top_k, "top_k", 1, 20))
        decoded = _image(image)
        models = self.models_of(session)
        result = serving.predict(models, decoded.image)
        table = result.table
        labels = serving.predicted_labels(table, serving.class_thresholds(models, threshold), top_k)
        chart = serving.probability_bars_html(table, top_k, threshold)
        top = table.index[0]
        notice = serving.out_of_class(models, result.logits)
        warning = (f"**Notice: this photo looks unlike what the models were trained on** ({len(notice.flagged)} of "
                   f"{len(notice.calibrated)} methods flag it): they only know {len(models.classes)} classes, so the "
                   "labels below may be meaningless. " if notice.shown else "")
        status = (f"{warning}{len(models.methods)} methods on a {decoded.original_size[0]} x {decoded.original_size[1]} image "
                  f"in {time.perf_counter() - start:.2f} s. Top class: **{serving.md(top)}** "
                  f"(mean {table['mean'].iloc[0]:.2f}). {decoded.note}")
        return status, _records(table.round(3), "class"), chart, labels, serving.labels_html(labels, threshold, top_k)

    @guarded
    @gpu_task(duration=60)  # ZeroGPU: a GPU for the model work; nothing changes on a CPU
    def explain(self, image: Any, class_name: Any, explainer: Any = "own", scaling: Any = "per-map",
                session: ModelSet | None = None) -> tuple:
        """Each method's evidence map for one class (top-scoring when empty): its own explainer (CAM,
        Grad-CAM or SSGRL attention) or Grad-CAM for every method, on per-map or shared colour scales."""
        class_name = _text(class_name, "class_name")
        explainer, scaling = _text(explainer, "explainer") or "own", _text(scaling, "scaling") or "per-map"
        decoded = _image(image)
        chosen, maps = serving.class_maps(self.models_of(session), decoded.image, class_name, explainer)
        how = "the top-scoring class" if not class_name else "the chosen class"
        which = "each method's own explainer" if explainer == "own" else "Grad-CAM for every method"
        status = (f"Maps for **{serving.md(chosen)}** ({how}), {which}. {serving.map_reading(maps, scaling)} "
                  f"{decoded.note}")
        return status, serving.explanation_gallery(decoded.image, maps, scaling)

    @guarded
    @gpu_task(duration=60)  # ZeroGPU: a GPU for the model work; nothing changes on a CPU
    def flip_consistency(self, image: Any, method: Any, class_name: Any, session: ModelSet | None = None) -> tuple:
        """Map of the image vs. map of the mirrored image mirrored back (of ``method``, G-CAM when empty),
        and every method's consistency for the class."""
        method, class_name = _text(method, "method"), _text(class_name, "class_name")
        decoded = _image(image)
        models = self.models_of(session)
        result = serving.flip_views(models, decoded.image, method or self.flip_default(models), class_name)
        status = f"Flip consistency for **{serving.md(result.class_name)}**. {serving.FLIP_READING} {decoded.note}"
        scores = result.scores.assign(cosine=result.scores.cosine.round(4), L_A=result.scores.L_A.map(_significant))
        return status, serving.flip_gallery(decoded.image, result), scores

    @guarded
    def per_class_ap(self, session: ModelSet | None = None) -> tuple:
        """Per-class AP of every model from its eval.json (rows: classes, last row mAP), and the
        seeds / bootstrap intervals of the shipped report.json."""
        models = self.models_of(session)
        table = serving.per_class_ap(models)
        seeds_note, seeds_table = serving.seed_comparison(models)
        sources = "; ".join(
            f"{m.name}: {serving.md(m.evaluation.get('dataset', '?'))} {serving.md(m.evaluation.get('split', '?'))}, "
            f"{serving.md(m.evaluation.get('num_images', '?'))} images"
            for m in models.methods.values() if m.evaluation is not None
        )
        missing = [m.name for m in models.methods.values() if m.evaluation is None]
        status = (f"AP in %. {sources}." + (f" No evaluation for: {', '.join(missing)}." if missing else "")
                  + f"\n\n**Is a difference real?** {seeds_note}")
        chart = serving.figure(models, ("ap",), lambda: serving.ap_chart(table))
        return status, seeds_table, _records(table, "class"), chart

    @guarded
    def what_models_see(self, session: ModelSet | None = None) -> tuple:
        """What the runs measured on the evaluation split (eval.json "diagnostics", report.json
        "disagreement"): map localisation against boxes, flip consistency, what each label graph
        adds, and the images on which the methods disagree most."""
        models = self.models_of(session)
        status, table = seeing.seeing_table(models)
        plot = serving.figure(models, ("seeing",), lambda: seeing.seeing_figure(table)) if table is not None else None
        per_class = seeing.graph_table(models)
        graph_plot = (serving.figure(models, ("graph-ap",), lambda: seeing.graph_figure(per_class))
                      if per_class is not None else None)
        dis_status, dis_table, images = seeing.disagreement_table(models)
        gallery, note = seeing.disagreement_gallery(images)
        if note:  # words for the operator (where the images are): the log, not the public page
            log.info("disputed images: %s", note.strip())
        shown = gr.update(value=gallery, visible=True) if gallery else gr.update(value=None, visible=False)
        faith_plot = (serving.figure(models, ("faithfulness",), lambda: seeing.faithfulness_figure(models))
                      if seeing.has_faithfulness(models) else None)
        return (status, table, plot, faith_plot, seeing.sanity_lines(models),
                None if per_class is None else _records(per_class, "class"), graph_plot, dis_status, dis_table, shown)

    @guarded
    @gpu_task(duration=30)  # ZeroGPU: a GPU for the model work; nothing changes on a CPU
    def graph_effect(self, image: Any, session: ModelSet | None = None) -> tuple:
        """Each graph method's scores on the photo with and without its label graph, largest changes first."""
        decoded = _image(image)
        status, table = seeing.graph_effect(self.models_of(session), decoded.image)
        return status, table

    @guarded
    def label_graph(self, method: Any, tau: Any, p: Any, session: ModelSet | None = None) -> tuple:
        """Co-occurrence P(j|i) of a model's training split and its re-weighted graph A'' for tau, p."""
        method = _text(method, "method")
        tau, p = _number(tau, "tau", 0.0, 1.0), _number(p, "p", 0.0, 1.0)
        models = self.models_of(session)
        name, stats = serving.label_statistics(models, method)
        weights, edges = serving.reweighted_graph(stats, tau, p)
        params = models.method(name).model.params
        trained = (f" {name} was trained with tau = {serving.md(params['tau'])}, p = {serving.md(params['p'])}."
                   if "tau" in params else "")
        status = (f"Label statistics of **{name}** ({stats.num_images} training images). "
                  f"tau = {tau:.2f} keeps **{edges}** directed edges; p = {p:.2f} is what neighbours share.{trained}")
        heatmap = serving.figure(models, ("heatmap", name), lambda: serving.cooccurrence_heatmap(stats))
        graph = serving.figure(models, ("graph", name, round(tau, 2), round(p, 2)),
                              lambda: serving.graph_figure(stats, weights, tau, p, edges))
        return status, heatmap, graph

    @guarded
    def classifier_tsne(self, session: ModelSet | None = None) -> tuple:
        """t-SNE of the classifiers over pooled features (the variants with a CAM)."""
        embedding = serving.tsne(self.models_of(session))
        shown = ", ".join(embedding.method.unique())
        return (f"t-SNE of {len(embedding)} classifier vectors ({shown}), L2-normalised, perplexity 5; "
                "grey lines join one class's classifiers.",
                serving.figure(self.models_of(session), ("tsne",), lambda: serving.tsne_figure(embedding)))

    @guarded
    def load_models(self, source: Any, session: ModelSet | None = None) -> tuple:
        """Load every variant from a folder or Hub repo id (``user/repo@revision`` pins one) into
        this visitor's session only; empty: back to the operator's models. Refused unless the
        operator opted in."""
        if not self.allow_loading:
            raise RequestError("This app serves fixed models; loading other models is turned off here.")
        source = _text(source, "source")
        if not source:
            return (None, *self.model_choices(None))
        candidate = ModelSet.load(source.strip(), trusted=False)
        if candidate.methods:
            self.keep_visitor_set(candidate, session)
            return (candidate, *self.model_choices(candidate))
        problems = "; ".join(f"{k}: {v}" for k, v in candidate.problems.items())
        raise RequestError(f"No model could be loaded from that source ({problems}). "
                           f"Still serving {len(self.models_of(session).methods)} models.")

    def opening_example(self) -> tuple:
        """The first example predicted with the default settings, computed once and then served
        from memory: the Space opens with the five methods already compared."""
        with self._opening_lock:
            if self._opening is None and self.examples:
                effect = self.graph_effect(str(self.examples[0])) if any(
                    m.model.has_label_graph for m in self.models.methods.values()) else (gr.update(), gr.update())
                self._opening = (*self.predict(str(self.examples[0]), None, 5), *effect)
        if self._opening is None:
            return (gr.update(),) * 8
        return (str(self.examples[0]), *self._opening)

    def flip_default(self, models: ModelSet | None = None) -> str | None:
        """The first method trained for consistent maps (``trained_for_consistency``), else the first loaded."""
        models = models or self.models
        trained = [n for n, m in models.methods.items() if m.model.trained_for_consistency]
        return next(iter(trained or models.methods), None)

    def model_choices(self, session: ModelSet | None = None) -> tuple:
        """Status and the dropdowns that depend on which models are loaded."""
        models = self.models_of(session)
        with_stats = [n for n, m in models.methods.items() if m.model.label_stats]
        # one training split for all (the usual case): nothing to choose, so no dropdown
        distinct = {json.dumps(models.methods[n].model.label_stats, sort_keys=True) for n in with_stats}
        return (
            serving.status_markdown(models),
            gr.update(choices=models.classes, value=None),
            gr.update(choices=models.classes, value=None),
            gr.update(choices=models.names, value=self.flip_default(models)),
            gr.update(choices=with_stats, value=with_stats[0] if with_stats else None, visible=len(distinct) > 1),
        )


def top_class(table: pd.DataFrame | None) -> tuple:
    """After a prediction, preselect its top-scoring class in the explain and flip tabs."""
    if table is None or len(table) == 0 or "class" not in table:
        return gr.update(), gr.update()
    top = str(table["class"].iloc[0])
    return gr.update(value=top), gr.update(value=top)
