"""Gradio app: the five variants side by side (predict, explain, flip consistency, analysis).

Every handler is an API endpoint (``api_name`` in ``build_demo``); the logic is in ``mlc.serving``.
``python app.py`` serves on 0.0.0.0:7860 (``PORT`` / ``GRADIO_SERVER_PORT`` respected). Models come
from ``checkpoints/<variant>/`` (``MLC_CHECKPOINTS`` overrides it) or a Hub repo (``MLC_HUB_REPO``).
"""
from __future__ import annotations

import os

if __name__ == "__main__":  # the imports below take a while on a small machine: say so at once
    print("mlc app: starting (importing gradio and torch) ...", flush=True)
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home at start-up
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import functools  # noqa: E402
from collections import OrderedDict  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
import types  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, Callable  # noqa: E402

import gradio as gr  # noqa: E402
import pandas as pd  # noqa: E402

from mlc import insight, serving  # noqa: E402
from mlc.serving import ModelSet, RequestError, fair_queue, uploads  # noqa: E402

ROOT = Path(__file__).resolve().parent
# the first one opens the page already predicted: a photo on which the methods predict something
OPENING_EXAMPLE = "living_room.jpg"  # several classes, and the methods disagree on one of them
EXAMPLES = sorted((ROOT / "examples").glob("*.jpg"), key=lambda p: (p.name != OPENING_EXAMPLE, p.name))
log = logging.getLogger("mlc.app")


def _upload_path(component: gr.Image, payload: Any) -> str | None:
    """The image's path, checked (``mlc.serving.uploads``), without opening it."""
    try:
        return uploads.upload_path(payload, Path(component.GRADIO_CACHE), keep=component.temp_files.add)
    except RequestError as err:
        raise gr.Error(str(err), print_exception=False) from None


def image_input(**kwargs: Any) -> gr.Image:
    """A ``gr.Image`` whose handler gets the upload's path, checked and undecoded.

    Gradio's own preprocessing opens uploads with PIL before the handler runs, so a non-image file
    or a decompression bomb would fail there with a generic error; ``mlc.serving.load_image``
    decodes instead and explains every failure. Gradio's validation of the payload is turned off
    (after the API schema is cached, so clients still see an image input): ``_upload_path`` checks
    every payload, also those Gradio would let through unchecked (a bare ``{"path": ...}``), and
    names what is wrong. The instance is patched rather than subclassed because Gradio writes a
    ``.pyi`` stub beside any module defining a component.
    """
    image = gr.Image(type="filepath", **kwargs)
    image.api_info()  # cached: view_api keeps describing an image file
    image.data_model = None  # type: ignore[assignment]
    image.preprocess = types.MethodType(_upload_path, image)  # type: ignore[method-assign]
    return image


def default_source() -> str:
    """A Hub repo id from ``MLC_HUB_REPO``, else ``MLC_CHECKPOINTS``, else ``checkpoints/`` beside this file."""
    return os.environ.get("MLC_HUB_REPO") or os.environ.get("MLC_CHECKPOINTS") or str(ROOT / "checkpoints")


ALLOW_LOADING_ENV = "MLC_ALLOW_MODEL_LOADING"  # "1": visitors may load other models, for their session only
SERVER_CONCURRENCY = 1  # model requests at a time, all endpoints together (the cores are shared)
QUEUE_MAX = 16  # waiting requests; one more is told the app is busy
MAX_VISITOR_SETS = 4  # visitors' own model sets held at once (opt-in loading); the least recently used is freed
PER_CLIENT = 2  # waiting requests of one client (its address); served round-robin across clients
MAX_UPLOAD = f"{uploads.MAX_UPLOAD_BYTES // 2**20}mb"  # refused at upload, before any handler runs (data URLs: in the handler)
CACHE_SECONDS = (600, 1800)  # uploads and outputs older than 30 min are deleted every 10 min


# Gradio's gallery takes one column count: on a phone, two maps a row instead of five side-scrolling
PHONE_CSS = ("@media (max-width: 640px) { #explain-gallery .grid-container, #flip-gallery .grid-container "
             "{ grid-template-columns: repeat(2, minmax(0, 1fr)) !important; } "
             "#image-row { flex-direction: column !important; } #image-row > * { width: 100% !important; } }")


def guarded(fn: Callable[..., tuple]) -> Callable[..., tuple]:
    """Turn a failure into ``gr.Error``: the UI shows the message, an API client gets an exception
    carrying it. A request's mistake is told as is; anything else is logged and told in general
    words (an exception's text may hold server paths)."""

    @functools.wraps(fn)
    def run(*args: Any) -> tuple:
        try:
            return fn(*args)
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


def _pass_through(component: gr.components.Component, payload: Any) -> Any:
    return payload


def checked_by_handler(component: gr.components.Component) -> gr.components.Component:
    """Let the handler validate this input (``_number`` / ``_text``): Gradio's own check of an API
    value answers a wrong type with an anonymous error, ours with a message naming the input."""
    component.preprocess = types.MethodType(_pass_through, component)  # type: ignore[method-assign]
    return component


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

    def __init__(self, model_set: ModelSet, allow_loading: bool = False):
        self.models = model_set
        self.allow_loading = allow_loading
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
    def predict(self, image: Any, threshold: Any, top_k: Any, session: ModelSet | None = None) -> tuple:
        """Every method's per-class probabilities, a chart of the top-k classes, and the labels at the threshold."""
        start = time.perf_counter()
        threshold = _number(threshold, "threshold", 0.0, 1.0)
        top_k = int(_number(top_k, "top_k", 1, 20))
        decoded = _image(image)
        models = self.models_of(session)
        table = serving.predict_probabilities(models, decoded.image)
        labels = serving.predicted_labels(table, threshold, top_k)
        chart = serving.probability_bars_html(table, top_k, threshold)
        top = table.index[0]
        status = (f"{len(models.methods)} methods on a {decoded.original_size[0]} x {decoded.original_size[1]} image "
                  f"in {time.perf_counter() - start:.2f} s. Top class: **{serving.md(top)}** "
                  f"(mean {table['mean'].iloc[0]:.2f}). {decoded.note}")
        return status, _records(table.round(3), "class"), chart, labels, serving.labels_html(labels, threshold, top_k)

    @guarded
    def explain(self, image: Any, class_name: Any, session: ModelSet | None = None) -> tuple:
        """Each method's map for one class (top-scoring when empty): CAM, Grad-CAM or SSGRL attention."""
        class_name = _text(class_name, "class_name")
        decoded = _image(image)
        chosen, maps = serving.class_maps(self.models_of(session), decoded.image, class_name)
        how = "the top-scoring class" if not class_name else "the chosen class"
        status = (f"Maps for **{serving.md(chosen)}** ({how}). {serving.MAP_READING} {decoded.note}")
        return status, serving.explanation_gallery(decoded.image, maps)

    @guarded
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
        chart = models.figure(("ap",), lambda: serving.ap_chart(table))
        return status, seeds_table, _records(table, "class"), chart

    @guarded
    def what_models_see(self, session: ModelSet | None = None) -> tuple:
        """What the runs measured on the evaluation split (eval.json "diagnostics", report.json
        "disagreement"): map localisation against boxes, flip consistency, what each label graph
        adds, and the images on which the methods disagree most."""
        models = self.models_of(session)
        status, table = insight.seeing_table(models)
        plot = models.figure(("seeing",), lambda: insight.seeing_figure(table)) if table is not None else None
        per_class = insight.graph_table(models)
        graph_plot = (models.figure(("graph-ap",), lambda: insight.graph_figure(per_class))
                      if per_class is not None else None)
        dis_status, dis_table, images = insight.disagreement_table(models)
        gallery, note = insight.disagreement_gallery(images)
        return (status, table, plot, None if per_class is None else _records(per_class, "class"), graph_plot,
                dis_status + (" " + note if note else ""), dis_table, gallery)

    @guarded
    def graph_effect(self, image: Any, session: ModelSet | None = None) -> tuple:
        """Each graph method's scores on the photo with and without its label graph, largest changes first."""
        decoded = _image(image)
        status, table = insight.graph_effect(self.models_of(session), decoded.image)
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
        heatmap = models.figure(("heatmap", name), lambda: serving.cooccurrence_heatmap(stats))
        graph = models.figure(("graph", name, round(tau, 2), round(p, 2)),
                              lambda: serving.graph_figure(stats, weights, tau, p, edges))
        return status, heatmap, graph

    @guarded
    def classifier_tsne(self, session: ModelSet | None = None) -> tuple:
        """t-SNE of the classifiers over pooled features (the variants with a CAM)."""
        embedding = self.models_of(session).tsne
        shown = ", ".join(embedding.method.unique())
        return (f"t-SNE of {len(embedding)} classifier vectors ({shown}), L2-normalised, perplexity 5; "
                "grey lines join one class's classifiers.",
                self.models_of(session).figure(("tsne",), lambda: serving.tsne_figure(embedding)))

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
            if self._opening is None and EXAMPLES:
                effect = self.graph_effect(str(EXAMPLES[0])) if any(
                    m.model.has_label_graph for m in self.models.methods.values()) else (gr.update(), gr.update())
                self._opening = (*self.predict(str(EXAMPLES[0]), 0.5, 5), *effect)
        if self._opening is None:
            return (gr.update(),) * 8
        return (str(EXAMPLES[0]), *self._opening)

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


def _top_class(table: pd.DataFrame | None) -> tuple:
    """After a prediction, preselect its top-scoring class in the explain and flip tabs."""
    if table is None or len(table) == 0 or "class" not in table:
        return gr.update(), gr.update()
    top = str(table["class"].iloc[0])
    return gr.update(value=top), gr.update(value=top)


def _intro() -> str:
    return (
        "# Multi-label classification with label graphs\n"
        "Five variants side by side: **baseline** (CNN + linear), **ggnn** (gated graph network over a "
        "knowledge graph), **ssgrl** (semantic decoupling + interaction), **mlgcn** (GCN-produced "
        "classifiers) and **gcam** (ML-GCN trained for CAM flip consistency). Upload an image once; "
        "every tab uses it."
    )


def allow_loading_default() -> bool:
    return os.environ.get(ALLOW_LOADING_ENV, "").strip().lower() in ("1", "true", "yes")


def build_demo(checkpoint_dir: str | Path | None = None, hub_repo: str | None = None,
               model_set: ModelSet | None = None, allow_loading: bool | None = None) -> gr.Blocks:
    """The app over a model set (given, or loaded once here from a folder, a Hub repo or the default).

    ``allow_loading`` (default: ``MLC_ALLOW_MODEL_LOADING``) shows a "load models" field whose
    models serve that visitor's session only; off, no endpoint can change what is served.
    """
    serving.configure_threads()
    serving.configure_memory()
    if model_set is None:
        log.info("loading the models ...")
        started = time.perf_counter()
        model_set = ModelSet.load(hub_repo or checkpoint_dir or default_source())
        log.info("loaded %d models (%s) in %.1f s; building the page ...", len(model_set.methods),
                 ", ".join(model_set.names) or "none", time.perf_counter() - started)
    allow_loading = allow_loading_default() if allow_loading is None else allow_loading
    handlers = Handlers(model_set, allow_loading)
    status, class_a, class_b, method_choice, stats_choice = handlers.model_choices()
    busy = dict(concurrency_limit=SERVER_CONCURRENCY, concurrency_id="models")  # one limit for every model endpoint

    with gr.Blocks(title="mlc: multi-label classification with label graphs", delete_cache=CACHE_SECONDS) as demo:
        # this visitor's own models (only with allow_loading), else None; freed when the session ends
        session = gr.State(None, delete_callback=handlers.end_session)
        gr.Markdown(_intro())
        with gr.Accordion("Models", open=False):
            model_status = gr.Markdown(status, elem_id="model-status")
            if allow_loading:
                with gr.Row():
                    source = gr.Textbox(label="Models from (this session only)",
                                        placeholder="a local folder or a Hub repo id (user/repo or user/repo@revision)",
                                        scale=4)
                    load_button = gr.Button("Load models", scale=1)
        with gr.Row(elem_id="image-row"):  # image and examples; stacked on a phone
            image = image_input(label="Image", sources=["upload", "clipboard"], height=300, elem_id="image")
            if EXAMPLES:
                gr.Examples([[str(p)] for p in EXAMPLES], inputs=[image], label="Examples", elem_id="examples")

        with gr.Tabs():
            with gr.Tab("Predict"):
                with gr.Row():
                    threshold = checked_by_handler(gr.Slider(0.0, 1.0, value=0.5, step=0.01, label="Threshold"))
                    top_k = checked_by_handler(gr.Slider(
                        1, 20, value=5, step=1, label="Top-k",
                        info="classes in the chart; labels are taken from each method's top-k"))
                    predict_button = gr.Button("Predict", variant="primary")
                predict_status = gr.Markdown(elem_id="predict-status")
                labels_view = gr.HTML(label="Predicted labels", elem_id="labels-grid")
                labels = gr.JSON(label="labels", visible=False)  # the same, for API clients
                chart = gr.HTML(label="top classes chart", elem_id="predict-chart")
                table = gr.Dataframe(label="probabilities", interactive=False, elem_id="predict-table")
                with gr.Accordion("What the label graph changed on this photo", open=True):
                    effect_status = gr.Markdown(elem_id="graph-effect-status")
                    effect_table = gr.Dataframe(label="scores with and without the label graph", interactive=False,
                                                elem_id="graph-effect-table")
            with gr.Tab("Explain"):
                with gr.Row():
                    explain_class = gr.Dropdown(label="Class (empty: the top-scoring one)", allow_custom_value=True,
                                                **_dropdown(class_a))
                    explain_button = gr.Button("Explain", variant="primary")
                explain_status = gr.Markdown(elem_id="explain-status")
                explain_gallery = gr.Gallery(label="explanation maps", columns=5, height="auto", preview=False,
                                             object_fit="contain", elem_id="explain-gallery")
            with gr.Tab("Flip"):
                with gr.Row():
                    flip_method = gr.Dropdown(label="Method shown", allow_custom_value=True, **_dropdown(method_choice))
                    flip_class = gr.Dropdown(label="Class (empty: the top-scoring one)", allow_custom_value=True,
                                             **_dropdown(class_b))
                    flip_button = gr.Button("Compare with the flipped image", variant="primary")
                flip_status = gr.Markdown(elem_id="flip-status")
                flip_gallery = gr.Gallery(label="flip maps", columns=3, height="auto", object_fit="contain", preview=False,
                                          elem_id="flip-gallery")
                flip_table = gr.Dataframe(label="flip consistency per method", interactive=False, elem_id="flip-table")
            with gr.Tab("Analysis") as analysis_tab:
                ap_status = gr.Markdown(elem_id="ap-status")
                seeds_table = gr.Dataframe(label="seeds and bootstrap intervals", interactive=False,
                                           elem_id="seeds-table")
                ap_table = gr.Dataframe(label="per-class AP", interactive=False, elem_id="ap-table")
                ap_plot = gr.Image(label="per-class AP chart", type="filepath", elem_id="ap-plot", show_label=False)
                with gr.Row():
                    graph_method = gr.Dropdown(label="Label statistics of", allow_custom_value=True,
                                               **_dropdown(stats_choice))
                    tau = checked_by_handler(gr.Slider(0.0, 1.0, value=0.4, step=0.01, label="tau (threshold on P(j|i))"))
                    p = checked_by_handler(gr.Slider(0.0, 1.0, value=0.25, step=0.01,
                                                     label="p (weight shared by the neighbours)"))
                graph_status = gr.Markdown(elem_id="graph-status")
                with gr.Row():
                    heatmap = gr.Image(label="co-occurrence heatmap", type="filepath", elem_id="heatmap")
                    network = gr.Image(label="re-weighted graph", type="filepath", elem_id="network")
                tsne_status = gr.Markdown(elem_id="tsne-status")
                tsne_plot = gr.Image(label="t-SNE of the classifiers", type="filepath", elem_id="tsne-plot")
                gr.Markdown("### What the models see")
                seeing_status = gr.Markdown(elem_id="seeing-status")
                seeing_table = gr.Dataframe(label="localisation, flip consistency and the label graph's share",
                                            interactive=False, elem_id="seeing-table")
                seeing_plot = gr.Image(label="pointing game and box energy", type="filepath", elem_id="seeing-plot",
                                       show_label=False)
                graph_ap_table = gr.Dataframe(label="AP change per class from the label graph (pp)", interactive=False,
                                              elem_id="graph-ap-table")
                graph_ap_plot = gr.Image(label="AP change per class from the label graph", type="filepath",
                                         elem_id="graph-ap-plot", show_label=False)
                disagree_status = gr.Markdown(elem_id="disagree-status")
                disagree_table = gr.Dataframe(label="where the methods disagree", interactive=False,
                                              elem_id="disagree-table")
                disagree_gallery = gr.Gallery(label="disputed images", columns=4, height="auto", preview=False,
                                              object_fit="contain", elem_id="disagree-gallery")

        predict_io = dict(fn=handlers.predict, inputs=[image, threshold, top_k, session],
                          outputs=[predict_status, table, chart, labels, labels_view], **busy)
        predicted = predict_button.click(**predict_io, api_name="predict")
        predicted.success(_top_class, inputs=[table], outputs=[explain_class, flip_class], api_visibility="private")
        predicted.success(handlers.graph_effect, [image, session], [effect_status, effect_table],
                          api_name="graph_effect", **busy)
        for slider in (threshold, top_k):
            slider.release(**predict_io, api_visibility="private")
        explain_button.click(handlers.explain, [image, explain_class, session], [explain_status, explain_gallery],
                             api_name="explain", **busy)
        flip_button.click(handlers.flip_consistency, [image, flip_method, flip_class, session],
                          [flip_status, flip_gallery, flip_table], api_name="flip_consistency", **busy)
        graph_io = dict(fn=handlers.label_graph, inputs=[graph_method, tau, p, session],
                        outputs=[graph_status, heatmap, network], **busy)
        analysis_tab.select(handlers.per_class_ap, [session], [ap_status, seeds_table, ap_table, ap_plot],
                            api_name="per_class_ap", **busy) \
            .then(handlers.what_models_see, [session],
                  [seeing_status, seeing_table, seeing_plot, graph_ap_table, graph_ap_plot, disagree_status,
                   disagree_table, disagree_gallery], api_name="what_models_see", **busy) \
            .then(**graph_io, api_name="label_graph") \
            .then(handlers.classifier_tsne, [session], [tsne_status, tsne_plot], api_name="classifier_tsne", **busy)
        for control in (tau, p):
            control.release(**graph_io, api_visibility="private")
        graph_method.input(**graph_io, api_visibility="private")
        choice_outputs = [model_status, explain_class, flip_class, flip_method, graph_method]
        if allow_loading:
            load_button.click(handlers.load_models, [source, session], [session, *choice_outputs],
                              api_name="load_models", **busy)
        if EXAMPLES:  # open with the first example already predicted (computed once, then from memory)
            demo.load(handlers.opening_example, None,
                      [image, predict_status, table, chart, labels, labels_view, effect_status, effect_table],
                      api_visibility="private", **busy)
    return demo


def _dropdown(update: dict) -> dict:
    """Initial choices and value of a dropdown, from the same update ``model_choices`` sends later."""
    return {key: update[key] for key in ("choices", "value", "visible") if key in update}


def launch(demo: gr.Blocks, port: int | None = None, server_name: str | None = None,
           client_key: fair_queue.ClientKey | None = None, **kwargs: Any) -> gr.Blocks:
    """Queue (``SERVER_CONCURRENCY`` model requests at a time over all endpoints, at most
    ``QUEUE_MAX`` waiting, at most ``PER_CLIENT`` of them from one client, served round-robin across
    clients, abandoned ones dropped: ``mlc.serving.fair_queue``) and serve, uploads capped at
    ``MAX_UPLOAD``; by default on 0.0.0.0 and PORT / GRADIO_SERVER_PORT / 7860.

    ``client_key`` (a request -> a key) says who a request comes from; by default the peer
    address, or the header named by ``MLC_CLIENT_HEADER`` (X-Forwarded-For on a Space)."""
    from starlette.middleware import Middleware

    port = port or int(os.environ.get("PORT") or os.environ.get("GRADIO_SERVER_PORT") or 7860)
    server_name = server_name or os.environ.get("GRADIO_SERVER_NAME", "0.0.0.0")
    kwargs.setdefault("max_file_size", MAX_UPLOAD)
    kwargs.setdefault("css", PHONE_CSS)
    demo.queue(default_concurrency_limit=SERVER_CONCURRENCY, max_size=QUEUE_MAX)
    tracker = fair_queue.StreamTracker()
    fair_queue.FairQueue.install(demo._queue, tracker, per_client=PER_CLIENT, client_key=client_key)
    app_kwargs = dict(kwargs.pop("app_kwargs", None) or {})
    body_limit = uploads.limit_request_body(uploads.MAX_UPLOAD_BYTES * 4 // 3 + 2**20)  # a capped data URL fits
    app_kwargs["middleware"] = [*app_kwargs.get("middleware", []), Middleware(tracker.middleware), Middleware(body_limit)]
    # _frontend=False skips Gradio's start-up probe of its own page (a HEAD with a 3 s timeout, meant
    # for notebooks), which kills the app when a busy machine renders the first page slower than that
    kwargs.setdefault("_frontend", False)
    demo.launch(server_name=server_name, server_port=port, app_kwargs=app_kwargs, **kwargs)
    return demo


@functools.cache
def _module_demo() -> gr.Blocks:
    return build_demo()


def __getattr__(name: str) -> Any:
    """``app.demo`` is built on first access only, so importing this module (tests) stays cheap."""
    if name == "demo":
        return _module_demo()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="mlc app: %(message)s")
    log.info("imports done; %s", "model loading by visitors is ON (their session only)" if allow_loading_default()
             else "models are fixed (MLC_ALLOW_MODEL_LOADING is off)")
    launch(_module_demo())
