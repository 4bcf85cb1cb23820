"""Gradio app: the five variants side by side (predict, explain, flip consistency, analysis).

The page layout and the wiring of its events; the handlers are ``mlc.serving.handlers`` (every one
an API endpoint, ``api_name`` below), the views and models the rest of ``mlc.serving``.
``python app.py`` serves on 127.0.0.1:7860 (0.0.0.0 on a Space; ``GRADIO_SERVER_NAME``, ``PORT`` /
``GRADIO_SERVER_PORT`` respected). Models come
from ``checkpoints/<variant>/`` (``MLC_CHECKPOINTS`` overrides it) or a Hub repo (``MLC_HUB_REPO``).
"""
from __future__ import annotations

import os

if __name__ == "__main__":  # the imports below take a while on a small machine: say so at once
    print("mlc app: starting (importing gradio and torch) ...", flush=True)
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home at start-up
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import functools  # noqa: E402
import logging  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import gradio as gr  # noqa: E402

from mlc import serving  # noqa: E402
from mlc.serving import ModelSet  # noqa: E402
from mlc.serving.components import checked_by_handler, image_input  # noqa: E402
from mlc.serving.handlers import Handlers, top_class  # noqa: E402
from mlc.serving.server import (  # noqa: E402,F401  (app.launch, app.default_server_name: the entry points)
    MAX_UPLOAD, PER_CLIENT, QUEUE_MAX, SERVER_CONCURRENCY, default_server_name, launch,
)

ROOT = Path(__file__).resolve().parent
# the first one opens the page already predicted: a photo on which the methods predict something
OPENING_EXAMPLE = "living_room.jpg"  # several classes, and the methods disagree on one of them
EXAMPLES = sorted((ROOT / "examples").glob("*.jpg"), key=lambda p: (p.name != OPENING_EXAMPLE, p.name))
log = logging.getLogger("mlc.app")


def default_source() -> str:
    """A Hub repo id from ``MLC_HUB_REPO``, else ``MLC_CHECKPOINTS``, else ``checkpoints/`` beside this file."""
    return os.environ.get("MLC_HUB_REPO") or os.environ.get("MLC_CHECKPOINTS") or str(ROOT / "checkpoints")


ALLOW_LOADING_ENV = "MLC_ALLOW_MODEL_LOADING"  # "1": visitors may load other models, for their session only
CACHE_SECONDS = (300, 1500)  # every 5 min, uploads and outputs older than 25 min are deleted: none lives over 30 min


def _intro(model_set: ModelSet) -> str:
    """The opening lines, from what is loaded (each variant's own ``summary``)."""
    parts = [f"**{name}**" + (f" ({m.model.summary})" if m.model.summary else "") for name, m in model_set.methods.items()]
    listed = ", ".join(parts[:-1]) + (" and " if len(parts) > 1 else "") + (parts[-1] if parts else "")
    return (
        "# Multi-label classification with label graphs\n"
        f"{len(parts)} variants side by side: {listed or 'none loaded'}. Upload an image once; every tab uses it.\n\n"
        "<small>Privacy: your photos are kept on this server for at most 30 minutes (then deleted) to draw the "
        "results, and are never shared or used for anything else.</small>"
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
    if serving.runtime.use_gpu(model_set):
        log.info("ZeroGPU: the models run on the GPU lent per request")
    allow_loading = allow_loading_default() if allow_loading is None else allow_loading
    handlers = Handlers(model_set, allow_loading, EXAMPLES)
    status, class_a, class_b, method_choice, stats_choice = handlers.model_choices()
    busy = dict(concurrency_limit=SERVER_CONCURRENCY, concurrency_id="models")  # one limit for every model endpoint

    with gr.Blocks(title="mlc: multi-label classification with label graphs", delete_cache=CACHE_SECONDS) as demo:
        # this visitor's own models (only with allow_loading), else None; freed when the session ends
        session = gr.State(None, delete_callback=handlers.end_session)
        gr.Markdown(_intro(model_set))
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
                    thresholds = checked_by_handler(gr.Radio(
                        ["per-class", "global"], value="per-class", label="thresholds",
                        info="per-class: each method's own, tuned on its selection split; global: the slider"))
                    threshold = checked_by_handler(gr.Slider(0.0, 1.0, value=0.5, step=0.01, label="Threshold",
                                                             info="for every class, when thresholds is global"))
                    top_k = checked_by_handler(gr.Slider(
                        1, 20, value=5, step=1, label="Top-k",
                        info="classes in the chart; labels are taken from each method's top-k"))
                    predict_button = gr.Button("Predict", variant="primary")
                predict_status = gr.Markdown(label="status", elem_id="predict-status")
                gr.Markdown(f"<small>These models know {len(model_set.classes)} classes only: "
                            f"{serving.md(', '.join(model_set.classes))}. Anything else is not recognised.</small>",
                            elem_id="known-classes")
                labels_view = gr.HTML(label="Predicted labels", elem_id="labels-grid")
                labels = gr.JSON(label="labels", visible=False)  # the same, for API clients
                chart = gr.HTML(label="top classes chart", elem_id="predict-chart")
                table = gr.Dataframe(label="probabilities", interactive=False, elem_id="predict-table")
                with gr.Accordion("What the label graph changed on this photo", open=True):
                    effect_status = gr.Markdown(label="graph effect status", elem_id="graph-effect-status")
                    effect_table = gr.Dataframe(label="scores with and without the label graph", interactive=False,
                                                elem_id="graph-effect-table")
            with gr.Tab("Explain"):
                with gr.Row():
                    explain_class = gr.Dropdown(label="Class (empty: the top-scoring one)", allow_custom_value=True,
                                                **_dropdown(class_a))
                    explainer = checked_by_handler(gr.Radio(
                        ["own", "grad-cam"], value="own", label="explainer",
                        info="own: each method's map (CAM, attention, Grad-CAM); grad-cam: one explainer for all"))
                    scaling = checked_by_handler(gr.Radio(
                        ["per-map", "shared"], value="per-map", label="colour scale",
                        info="per-map: each map to its own maximum; shared: one scale per map kind"))
                    explain_button = gr.Button("Explain", variant="primary")
                explain_status = gr.Markdown(label="status", elem_id="explain-status")
                explain_gallery = gr.Gallery(label="explanation maps", columns=5, height="auto", preview=False,
                                             object_fit="contain", elem_id="explain-gallery")
            with gr.Tab("Flip"):
                with gr.Row():
                    flip_method = gr.Dropdown(label="Method shown", allow_custom_value=True, **_dropdown(method_choice))
                    flip_class = gr.Dropdown(label="Class (empty: the top-scoring one)", allow_custom_value=True,
                                             **_dropdown(class_b))
                    flip_button = gr.Button("Compare with the flipped image", variant="primary")
                flip_status = gr.Markdown(label="status", elem_id="flip-status")
                flip_gallery = gr.Gallery(label="flip maps", columns=3, height="auto", object_fit="contain", preview=False,
                                          elem_id="flip-gallery")
                flip_table = gr.Dataframe(label="flip consistency per method", interactive=False, elem_id="flip-table")
            with gr.Tab("Analysis") as analysis_tab:  # collapsible sections: a short page, also on a phone
                with gr.Accordion("Accuracy: per-class AP, seeds and intervals", open=True):
                    ap_status = gr.Markdown(label="AP status", elem_id="ap-status")
                    seeds_table = gr.Dataframe(label="seeds and bootstrap intervals", interactive=False,
                                               elem_id="seeds-table")
                    ap_table = gr.Dataframe(label="per-class AP", interactive=False, elem_id="ap-table")
                    ap_plot = gr.Image(label="per-class AP chart", type="filepath", elem_id="ap-plot", show_label=False)
                with gr.Accordion("The label graph", open=False):
                    with gr.Row():
                        graph_method = gr.Dropdown(label="Label statistics of", allow_custom_value=True,
                                                   **_dropdown(stats_choice))
                        tau = checked_by_handler(gr.Slider(0.0, 1.0, value=0.4, step=0.01, label="tau (threshold on P(j|i))"))
                        p = checked_by_handler(gr.Slider(0.0, 1.0, value=0.25, step=0.01,
                                                         label="p (weight shared by the neighbours)"))
                    graph_status = gr.Markdown(label="graph status", elem_id="graph-status")
                    with gr.Row():
                        heatmap = gr.Image(label="co-occurrence heatmap", type="filepath", elem_id="heatmap")
                        network = gr.Image(label="re-weighted graph", type="filepath", elem_id="network")
                with gr.Accordion("The classifiers (t-SNE)", open=False):
                    tsne_status = gr.Markdown(label="t-SNE status", elem_id="tsne-status")
                    tsne_plot = gr.Image(label="t-SNE of the classifiers", type="filepath", elem_id="tsne-plot")
                with gr.Accordion("What the models see: localisation, consistency, faithfulness", open=True):
                    seeing_status = gr.Markdown(label="what the models see status", elem_id="seeing-status")
                    seeing_table = gr.Dataframe(label="localisation, faithfulness, consistency and the label graph's share",
                                                interactive=False, elem_id="seeing-table")
                    seeing_plot = gr.Image(label="pointing game and box energy", type="filepath", elem_id="seeing-plot",
                                           show_label=False)
                    faithfulness_plot = gr.Image(label="deletion and insertion curves", type="filepath",
                                                 elem_id="faithfulness-plot", show_label=False)
                    sanity_text = gr.Markdown(label="sanity checks", elem_id="sanity-checks")
                with gr.Accordion("What the label graph adds, per class", open=False):
                    graph_ap_table = gr.Dataframe(label="AP change per class from the label graph (pp)",
                                                  interactive=False, elem_id="graph-ap-table")
                    graph_ap_plot = gr.Image(label="AP change per class from the label graph", type="filepath",
                                             elem_id="graph-ap-plot", show_label=False)
                with gr.Accordion("Where the methods disagree", open=False):
                    disagree_status = gr.Markdown(label="disagreement status", elem_id="disagree-status")
                    disagree_table = gr.Dataframe(label="where the methods disagree", interactive=False,
                                                  elem_id="disagree-table")
                    disagree_gallery = gr.Gallery(label="disputed images", columns=4, height="auto", preview=False,
                                                  visible=False, object_fit="contain", elem_id="disagree-gallery")

        predict_io = dict(fn=handlers.predict, inputs=[image, threshold, top_k, thresholds, session],
                          outputs=[predict_status, table, chart, labels, labels_view], **busy)
        predicted = predict_button.click(**predict_io, api_name="predict")
        predicted.success(top_class, inputs=[table], outputs=[explain_class, flip_class], api_visibility="private")
        predicted.success(handlers.graph_effect, [image, session], [effect_status, effect_table],
                          api_name="graph_effect", **busy)
        for slider in (threshold, top_k):
            slider.release(**predict_io, api_visibility="private")
        thresholds.input(**predict_io, api_visibility="private")
        explain_io = dict(fn=handlers.explain, inputs=[image, explain_class, explainer, scaling, session],
                          outputs=[explain_status, explain_gallery], **busy)
        explain_button.click(**explain_io, api_name="explain")
        for control in (explainer, scaling):
            control.input(**explain_io, api_visibility="private")
        flip_button.click(handlers.flip_consistency, [image, flip_method, flip_class, session],
                          [flip_status, flip_gallery, flip_table], api_name="flip_consistency", **busy)
        graph_io = dict(fn=handlers.label_graph, inputs=[graph_method, tau, p, session],
                        outputs=[graph_status, heatmap, network], **busy)
        analysis_tab.select(handlers.per_class_ap, [session], [ap_status, seeds_table, ap_table, ap_plot],
                            api_name="per_class_ap", **busy) \
            .then(handlers.what_models_see, [session],
                  [seeing_status, seeing_table, seeing_plot, faithfulness_plot, sanity_text, graph_ap_table,
                   graph_ap_plot, disagree_status,
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
