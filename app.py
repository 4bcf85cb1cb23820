"""Gradio app: the five variants side by side (predict, explain, flip consistency, analysis).

Every handler is an API endpoint (``api_name`` in ``build_demo``); the logic is in ``mlc.serving``.
``python app.py`` serves on 0.0.0.0:7860 (``PORT`` / ``GRADIO_SERVER_PORT`` respected). Models come
from ``checkpoints/<variant>/`` (``MLC_CHECKPOINTS`` overrides it) or a Hub repo (``MLC_HUB_REPO``).
"""
from __future__ import annotations

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home at start-up
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import functools  # noqa: E402
import logging  # noqa: E402
import time  # noqa: E402
import types  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, Callable  # noqa: E402

import gradio as gr  # noqa: E402
import pandas as pd  # noqa: E402
from gradio.data_classes import ImageData  # noqa: E402

from mlc import serving  # noqa: E402
from mlc.serving import ModelSet, RequestError  # noqa: E402

ROOT = Path(__file__).resolve().parent
EXAMPLES = sorted((ROOT / "examples").glob("*.jpg"))
log = logging.getLogger("mlc.app")


def _upload_path(component: gr.Image, payload: ImageData | None) -> str | None:
    """The uploaded file's path (a data URL is written to a file first), without opening it."""
    if payload is None:
        return None
    if payload.path is None and payload.url and payload.url.startswith("data:"):
        from gradio_client.utils import decode_base64_to_file

        return decode_base64_to_file(payload.url, dir=component.GRADIO_CACHE).name
    return payload.path


def image_input(**kwargs: Any) -> gr.Image:
    """A ``gr.Image`` whose handler gets the upload's path, undecoded.

    Gradio's own preprocessing opens uploads with PIL before the handler runs, so a non-image file
    or a decompression bomb would fail there with a generic error; ``mlc.serving.load_image``
    decodes instead and explains every failure. The instance's ``preprocess`` is replaced rather
    than subclassed because Gradio writes a ``.pyi`` stub beside any module defining a component.
    """
    image = gr.Image(type="filepath", **kwargs)
    image.preprocess = types.MethodType(_upload_path, image)  # type: ignore[method-assign]
    return image


def default_source() -> str:
    """A Hub repo id from ``MLC_HUB_REPO``, else ``MLC_CHECKPOINTS``, else ``checkpoints/`` beside this file."""
    return os.environ.get("MLC_HUB_REPO") or os.environ.get("MLC_CHECKPOINTS") or str(ROOT / "checkpoints")


def guarded(outputs: int) -> Callable[[Callable[..., tuple]], Callable[..., tuple]]:
    """Turn any failure into a status message (first output) and empty other outputs.

    The user sees what was wrong with the request, never a traceback (that goes to the log), and
    the server keeps serving.
    """

    def wrap(fn: Callable[..., tuple]) -> Callable[..., tuple]:
        @functools.wraps(fn)
        def run(*args: Any) -> tuple:
            try:
                return fn(*args)
            except RequestError as err:
                message = str(err)
            except Exception as err:  # the boundary: report, log, keep serving
                log.exception("request failed in %s", fn.__name__)
                message = f"The request failed ({type(err).__name__}: {err}). The app is still running."
            gr.Warning(message)
            return (f"**Error:** {message}", *([None] * outputs))

        return run

    return wrap


def _records(table: pd.DataFrame, index_name: str) -> pd.DataFrame:
    """Index as the first column and missing values as None (JSON has no NaN)."""
    out = table.rename_axis(index_name).reset_index()
    return out.astype(object).where(out.notna(), None)


def _significant(value: float, digits: int = 4) -> float:
    """Round to significant digits: L_A spans orders of magnitude across map kinds."""
    return float(f"{value:.{digits}g}")


def _image(path: str | None) -> serving.DecodedImage:
    if not path:
        raise RequestError("Upload an image first (or pick an example).")
    return serving.load_image(path)


class Handlers:
    """The app's endpoints over one model set; ``load_models`` swaps it for every visitor."""

    def __init__(self, model_set: ModelSet):
        self.models = model_set
        self.source = model_set.source  # what an empty "load models" reloads

    @guarded(outputs=3)
    def predict(self, image: str | None, threshold: float, top_k: float) -> tuple:
        """Every method's per-class probabilities, a chart of the top-k classes, and the labels at the threshold."""
        start = time.perf_counter()
        decoded = _image(image)
        models = self.models
        table = serving.predict_probabilities(models, decoded.image)
        labels = serving.predicted_labels(table, threshold, int(top_k))
        chart = serving.probability_chart(table, int(top_k), threshold)
        top = table.index[0]
        status = (f"{len(models.methods)} methods on a {decoded.original_size[0]} x {decoded.original_size[1]} image "
                  f"in {time.perf_counter() - start:.2f} s. Top class: **{top}** (mean {table['mean'].iloc[0]:.2f}). "
                  f"{decoded.note}")
        return status, _records(table.round(3), "class"), chart, labels

    @guarded(outputs=1)
    def explain(self, image: str | None, class_name: str | None) -> tuple:
        """Each method's map for one class (top-scoring when empty): CAM, Grad-CAM or SSGRL attention."""
        decoded = _image(image)
        chosen, maps = serving.class_maps(self.models, decoded.image, class_name)
        kinds = ", ".join(f"{m.method}: {m.kind}" for m in maps)
        how = "the top-scoring class" if not class_name else "the chosen class"
        status = f"Maps for **{chosen}** ({how}). {kinds}. Each map is scaled to its own range. {decoded.note}"
        return status, serving.explanation_gallery(decoded.image, maps)

    @guarded(outputs=2)
    def flip_consistency(self, image: str | None, method: str | None, class_name: str | None) -> tuple:
        """Map of the image vs. map of the mirrored image mirrored back (of ``method``, G-CAM when empty),
        and every method's consistency for the class."""
        decoded = _image(image)
        result = serving.flip_views(self.models, decoded.image, method or self.flip_default(), class_name)
        status = (f"Flip consistency for **{result.class_name}**: cosine 1 = the map mirrors perfectly; "
                  f"L_A (G-CAM's loss) is in each map's own units, so compare it within a map kind. {decoded.note}")
        scores = result.scores.assign(cosine=result.scores.cosine.round(4), L_A=result.scores.L_A.map(_significant))
        return status, serving.flip_gallery(decoded.image, result), scores

    @guarded(outputs=3)
    def per_class_ap(self) -> tuple:
        """Per-class AP of every model from its eval.json (rows: classes, last row mAP), and the
        seeds / bootstrap intervals of the shipped report.json."""
        table = serving.per_class_ap(self.models)
        seeds_note, seeds_table = serving.seed_comparison(self.models)
        sources = "; ".join(
            f"{m.name}: {m.evaluation.get('dataset', '?')} {m.evaluation.get('split', '?')}, "
            f"{m.evaluation.get('num_images', '?')} images"
            for m in self.models.methods.values() if m.evaluation is not None
        )
        missing = [m.name for m in self.models.methods.values() if m.evaluation is None]
        status = (f"AP in %. {sources}." + (f" No evaluation for: {', '.join(missing)}." if missing else "")
                  + f"\n\n**Is a difference real?** {seeds_note}")
        return status, seeds_table, _records(table, "class"), serving.ap_chart(table)

    @guarded(outputs=2)
    def label_graph(self, method: str | None, tau: float, p: float) -> tuple:
        """Co-occurrence P(j|i) of a model's training split and its re-weighted graph A'' for tau, p."""
        name, stats = serving.label_statistics(self.models, method)
        weights, edges = serving.reweighted_graph(stats, tau, p)
        params = self.models.method(name).model.params
        trained = f" {name} was trained with tau = {params['tau']}, p = {params['p']}." if "tau" in params else ""
        status = (f"Label statistics of **{name}** ({stats.num_images} training images). "
                  f"tau = {tau:.2f} keeps **{edges}** directed edges; p = {p:.2f} is what neighbours share.{trained}")
        return status, serving.cooccurrence_heatmap(stats), serving.graph_figure(stats, weights, tau, p, edges)

    @guarded(outputs=1)
    def classifier_tsne(self) -> tuple:
        """t-SNE of the baseline's classifiers and the GCN-produced ones of ML-GCN and G-CAM."""
        embedding = self.models.tsne
        shown = ", ".join(embedding.method.unique())
        return f"t-SNE of {len(embedding)} classifier vectors ({shown}), L2-normalised, perplexity 5.", \
            serving.tsne_figure(embedding)

    @guarded(outputs=4)
    def load_models(self, source: str | None) -> tuple:
        """Load every variant from a folder or Hub repo id (empty: reload the app's source); keeps the
        current models if none loads."""
        candidate = ModelSet.load((source or "").strip() or self.source)
        if candidate.methods:
            self.models = candidate
            return self.model_choices()
        problems = "; ".join(f"{k}: {v}" for k, v in candidate.problems.items())
        raise RequestError(f"No model could be loaded from {candidate.source!r} ({problems}). "
                           f"Still serving {len(self.models.methods)} models from {self.models.source!r}.")

    def flip_default(self) -> str | None:
        """G-CAM, the method trained for flip consistency, else the first loaded."""
        return "gcam" if "gcam" in self.models.methods else next(iter(self.models.methods), None)

    def model_choices(self) -> tuple:
        """Status and the dropdowns that depend on which models are loaded."""
        models = self.models
        with_stats = [n for n, m in models.methods.items() if m.model.label_stats]
        return (
            serving.status_markdown(models),
            gr.update(choices=models.classes, value=None),
            gr.update(choices=models.classes, value=None),
            gr.update(choices=models.names, value=self.flip_default()),
            gr.update(choices=with_stats, value=with_stats[0] if with_stats else None),
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


def build_demo(checkpoint_dir: str | Path | None = None, hub_repo: str | None = None,
               model_set: ModelSet | None = None) -> gr.Blocks:
    """The app over a model set (given, or loaded once here from a folder, a Hub repo or the default)."""
    serving.configure_threads()
    if model_set is None:
        model_set = ModelSet.load(hub_repo or checkpoint_dir or default_source())
    handlers = Handlers(model_set)
    status, class_a, class_b, method_choice, stats_choice = handlers.model_choices()

    with gr.Blocks(title="mlc: multi-label classification with label graphs") as demo:
        gr.Markdown(_intro())
        with gr.Accordion("Models", open=True):
            model_status = gr.Markdown(status, elem_id="model-status")
            with gr.Row():
                source = gr.Textbox(label="Models from", placeholder="a local folder or a Hub repo id (user/repo)",
                                    value=hub_repo or "", scale=4)
                load_button = gr.Button("Load models", scale=1)
        with gr.Row():
            image = image_input(label="Image", sources=["upload", "clipboard"], height=300, elem_id="image")
            if EXAMPLES:
                gr.Examples([[str(p)] for p in EXAMPLES], inputs=[image], label="Examples", elem_id="examples")

        with gr.Tabs():
            with gr.Tab("Predict"):
                with gr.Row():
                    threshold = gr.Slider(0.0, 1.0, value=0.5, step=0.01, label="Threshold")
                    top_k = gr.Slider(1, 20, value=5, step=1, label="Top-k",
                                      info="classes in the chart; labels are taken from each method's top-k")
                    predict_button = gr.Button("Predict", variant="primary")
                predict_status = gr.Markdown(elem_id="predict-status")
                with gr.Row():
                    labels = gr.JSON(label="Labels each method predicts (score >= threshold, within its top-k)",
                                     height=380, scale=1)
                    chart = gr.Plot(label="Top classes", elem_id="predict-chart", scale=2)
                table = gr.Dataframe(label="Probabilities, sorted by the mean over methods", interactive=False,
                                     elem_id="predict-table")
            with gr.Tab("Explain"):
                with gr.Row():
                    explain_class = gr.Dropdown(label="Class (empty: the top-scoring one)", allow_custom_value=True,
                                                **_dropdown(class_a))
                    explain_button = gr.Button("Explain", variant="primary")
                explain_status = gr.Markdown(elem_id="explain-status")
                explain_gallery = gr.Gallery(label="Explanations (method - map kind)", columns=5, height="auto",
                                             elem_id="explain-gallery")
            with gr.Tab("Flip consistency"):
                with gr.Row():
                    flip_method = gr.Dropdown(label="Method shown", allow_custom_value=True, **_dropdown(method_choice))
                    flip_class = gr.Dropdown(label="Class (empty: the top-scoring one)", allow_custom_value=True,
                                             **_dropdown(class_b))
                    flip_button = gr.Button("Compare with the flipped image", variant="primary")
                flip_status = gr.Markdown(elem_id="flip-status")
                flip_gallery = gr.Gallery(label="Map, flipped-back map, difference", columns=3, height="auto",
                                          elem_id="flip-gallery")
                flip_table = gr.Dataframe(label="Consistency per method for this class", interactive=False,
                                          elem_id="flip-table")
            with gr.Tab("Analysis") as analysis_tab:
                ap_status = gr.Markdown(elem_id="ap-status")
                seeds_table = gr.Dataframe(label="mAP over seeds and the bootstrap interval against the baseline",
                                           interactive=False, elem_id="seeds-table")
                ap_table = gr.Dataframe(label="Per-class AP (%)", interactive=False, elem_id="ap-table")
                ap_plot = gr.Plot(label="Per-class AP", elem_id="ap-plot")
                with gr.Row():
                    graph_method = gr.Dropdown(label="Label statistics of", allow_custom_value=True,
                                               **_dropdown(stats_choice))
                    tau = gr.Slider(0.0, 1.0, value=0.4, step=0.01, label="tau (threshold on P(j|i))")
                    p = gr.Slider(0.0, 1.0, value=0.25, step=0.01, label="p (weight shared by the neighbours)")
                graph_status = gr.Markdown(elem_id="graph-status")
                with gr.Row():
                    heatmap = gr.Plot(label="Co-occurrence P(j | i)", elem_id="heatmap")
                    network = gr.Plot(label="Re-weighted graph A''", elem_id="network")
                tsne_status = gr.Markdown(elem_id="tsne-status")
                tsne_plot = gr.Plot(label="t-SNE of the classifiers", elem_id="tsne-plot")

        predict_io = dict(fn=handlers.predict, inputs=[image, threshold, top_k],
                          outputs=[predict_status, table, chart, labels])
        predict_button.click(**predict_io, api_name="predict").success(
            _top_class, inputs=[table], outputs=[explain_class, flip_class], api_visibility="private")
        for slider in (threshold, top_k):
            slider.release(**predict_io, api_visibility="private")
        explain_button.click(handlers.explain, [image, explain_class], [explain_status, explain_gallery],
                             api_name="explain")
        flip_button.click(handlers.flip_consistency, [image, flip_method, flip_class],
                          [flip_status, flip_gallery, flip_table], api_name="flip_consistency")
        graph_io = dict(fn=handlers.label_graph, inputs=[graph_method, tau, p],
                        outputs=[graph_status, heatmap, network])
        analysis_tab.select(handlers.per_class_ap, None, [ap_status, seeds_table, ap_table, ap_plot],
                            api_name="per_class_ap") \
            .then(**graph_io, api_name="label_graph") \
            .then(handlers.classifier_tsne, None, [tsne_status, tsne_plot], api_name="classifier_tsne")
        for control in (tau, p):
            control.release(**graph_io, api_visibility="private")
        graph_method.input(**graph_io, api_visibility="private")
        choice_outputs = [model_status, explain_class, flip_class, flip_method, graph_method]
        load_button.click(handlers.load_models, [source], choice_outputs, api_name="load_models")
        demo.load(handlers.model_choices, None, choice_outputs, api_visibility="private")
    return demo


def _dropdown(update: dict) -> dict:
    """Initial choices and value of a dropdown, from the same update ``model_choices`` sends later."""
    return {"choices": update["choices"], "value": update["value"]}


def launch(demo: gr.Blocks, port: int | None = None, server_name: str | None = None, **kwargs: Any) -> gr.Blocks:
    """Queue (two requests at a time) and serve; by default on 0.0.0.0 and PORT / GRADIO_SERVER_PORT / 7860."""
    port = port or int(os.environ.get("PORT") or os.environ.get("GRADIO_SERVER_PORT") or 7860)
    server_name = server_name or os.environ.get("GRADIO_SERVER_NAME", "0.0.0.0")
    demo.queue(default_concurrency_limit=2).launch(server_name=server_name, server_port=port, **kwargs)
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
    logging.basicConfig(level=logging.INFO)
    launch(_module_demo())
