"""The Gradio app through its API (``gradio_client``), against tiny checkpoints written here.

``write_checkpoints`` and ``serve`` are shared with ``test_browser.py``.
"""
from __future__ import annotations

import json
import shutil
import socket
import struct
import zlib
from collections.abc import Iterator
from concurrent.futures import wait
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mlc import graph as label_graph
from mlc.data import VOC_CLASSES
from mlc.metrics import evaluate
from mlc.stats import LabelStatistics, label_statistics

from conftest import VARIANTS  # noqa: E402  (the registry's list)
# Gradio's own queue statistics trip pandas 3 deprecations on every event; they are not ours.
pytestmark = [
    pytest.mark.filterwarnings("ignore:'future.no_silent_downcasting' is deprecated"),
    pytest.mark.filterwarnings("ignore:The copy keyword is deprecated"),
]

MAP_KINDS = {"baseline": "CAM", "ggnn": "Grad-CAM", "ssgrl": "attention", "mlgcn": "CAM", "gcam": "CAM"}


# -- fixtures shared with the browser test ----------------------------------------------------------
def write_checkpoints(root: Path, seed: int = 0) -> Path:
    """Tiny-backbone checkpoints of the five variants (VOC classes) plus an eval.json each."""
    from mlc.models import create_model

    from fixtures import make_voc

    from mlc.data import build_dataset
    from mlc.diagnostics import diagnose

    rng = np.random.default_rng(seed)
    stats = label_statistics((rng.random((120, len(VOC_CLASSES))) < 0.25).astype(np.int8), VOC_CLASSES)
    embeddings = rng.normal(size=(len(VOC_CLASSES), 8)).astype(np.float32)
    # a small VOC tree whose ids are those of eval_scores.npz: the diagnostics' data, and the
    # dataset folder an operator points MLC_DATA_ROOT at for the disputed images
    ids = [f"{i:06d}" for i in range(50)]
    voc = make_voc(voc_root(root), annotations={"val": {
        i: [VOC_CLASSES[k % 20], VOC_CLASSES[(7 * k + 3) % 20]] for k, i in enumerate(ids[:12])}})
    val = build_dataset("voc2007", voc, "val")
    for name in VARIANTS:
        extra = {"hidden_dim": 16} if name == "ssgrl" else {}
        model = create_model(name, classes=VOC_CLASSES, backbone="tiny", pretrained=False, label_stats=stats,
                             embeddings=embeddings, **extra)
        model.backbone_is_pretrained = False  # the random tiny backbone must be saved with the heads
        model.save(root / name)
        targets = (np.random.default_rng(seed + 1).random((50, len(VOC_CLASSES))) < 0.3).astype(np.int8)
        scores = rng.random(targets.shape).astype(np.float32)
        report = evaluate(scores, targets, VOC_CLASSES)
        evaluation = {"model_name": name, "dataset": "voc2007", "split": "test", "num_images": 50,
                      "metrics": report.to_dict(), "diagnostics": diagnose(model.eval(), val, batch_size=12, faithfulness_pairs=6)}
        (root / name / "eval.json").write_text(json.dumps(evaluation))
        np.savez(root / name / "eval_scores.npz", scores=scores, targets=targets, ids=np.array(ids))
    from train.report import write_report

    write_report(root, num_samples=50)  # report.json: seeds and bootstrap intervals, as shipped
    return root


def voc_root(checkpoints: Path) -> Path:
    """Where ``write_checkpoints`` puts its small VOC tree (beside the checkpoints, not among them)."""
    return checkpoints.parent / f"{checkpoints.name}-voc"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serve(launch_kwargs: dict | None = None, **build_kwargs) -> Iterator[str]:
    """The app on a free local port (``app.build_demo(**build_kwargs)``, ``app.launch(**launch_kwargs)``), closed afterwards.

    The app sets torch's thread count for its process; it is restored for the other test modules.
    """
    import torch

    import app

    threads = torch.get_num_threads()
    demo = app.build_demo(**build_kwargs)
    port = free_port()
    app.launch(demo, port=port, server_name="127.0.0.1", prevent_thread_lock=True, quiet=True, **(launch_kwargs or {}))
    serve.demo = demo  # the running app, for tests that look at its queue
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        demo.close()
        torch.set_num_threads(threads)


def write_photo(path: Path, size: tuple[int, int] = (320, 240), seed: int = 0) -> Path:
    """A small RGB JPEG: smooth noise with a bright rectangle."""
    rng = np.random.default_rng(seed)
    pixels = (rng.random((size[1], size[0], 3)) * 80 + 60).astype(np.uint8)
    pixels[size[1] // 4: size[1] // 2, size[0] // 3: size[0] // 2] = (220, 40, 40)
    Image.fromarray(pixels).save(path, quality=90)
    return path


# -- fixtures ---------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory) -> Path:
    return write_checkpoints(tmp_path_factory.mktemp("checkpoints"))


@pytest.fixture(scope="session")
def client(checkpoints):
    from gradio_client import Client

    with serve(checkpoint_dir=checkpoints) as url:
        yield Client(url, verbose=False)


@pytest.fixture(scope="session")
def broken_checkpoints(checkpoints, tmp_path_factory) -> Path:
    """The same five, but ssgrl's weights are cut in half."""
    root = tmp_path_factory.mktemp("broken")
    for name in VARIANTS:
        shutil.copytree(checkpoints / name, root / name)
    weights = root / "ssgrl" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    return root


@pytest.fixture(scope="session")
def broken_client(broken_checkpoints):
    from gradio_client import Client

    with serve(checkpoint_dir=broken_checkpoints) as url:
        yield Client(url, verbose=False)


@pytest.fixture(scope="session")
def photo(tmp_path_factory) -> Path:
    return write_photo(tmp_path_factory.mktemp("images") / "photo.jpg")


def _png_1bit(path: Path, width: int, height: int) -> Path:
    """A black 1-bit PNG written row by row, so a 20000 x 20000 image costs ~50 KB and no big buffer."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    deflate = zlib.compressobj(9)
    row = b"\x00" * (1 + (width + 7) // 8)
    data = b"".join(deflate.compress(row) for _ in range(height)) + deflate.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b""))
    return path


@pytest.fixture(scope="session")
def bad_images(tmp_path_factory, photo) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bad")
    text = root / "notes.jpg"
    text.write_text("this is a text file renamed to .jpg\n")
    truncated = root / "truncated.jpg"
    truncated.write_bytes(photo.read_bytes()[: photo.stat().st_size // 2])
    gray, rgba, sixteen, tiny = root / "gray.png", root / "rgba.png", root / "sixteen.png", root / "tiny.png"
    Image.open(photo).convert("L").save(gray)
    Image.open(photo).convert("RGBA").save(rgba)
    ramp = (np.linspace(0, 65535, 240 * 320).reshape(240, 320)).astype(np.uint16)
    Image.fromarray(ramp).save(sixteen)  # mode I;16
    Image.new("RGB", (1, 1), (200, 30, 30)).save(tiny)
    huge_jpeg = root / "huge.jpg"
    Image.new("L", (14000, 10000), 128).save(huge_jpeg, quality=30)  # 140 MP baseline: decoded at 1/8 scale
    return {"text": text, "truncated": truncated, "gray": gray, "rgba": rgba, "sixteen": sixteen, "tiny": tiny,
            "huge_png": _png_1bit(root / "huge.png", 20000, 20000), "huge_jpeg": huge_jpeg}


# -- helpers ----------------------------------------------------------------------------------------
from gradio_client.exceptions import AppError  # noqa: E402  (what a failed request raises in the client)


def predict(client, path: Path, threshold: float = 0.5, top_k: int = 5) -> tuple:
    from gradio_client import handle_file

    return client.predict(handle_file(str(path)), threshold, top_k, "global", api_name="/predict")


def assert_clean(message: str) -> None:
    assert "Traceback" not in message and 'File "' not in message, message


def assert_good_prediction(result: tuple, methods: list[str] = VARIANTS) -> None:
    status, table, plot, labels, grid = result
    assert all(f"<th>{m}</th>" in grid for m in methods)
    assert_clean(status)
    assert not status.startswith("**Error"), status
    assert table["headers"] == ["class", *methods, "mean"]
    assert len(table["data"]) == len(VOC_CLASSES)
    assert sorted(row[0] for row in table["data"]) == sorted(VOC_CLASSES)
    assert plot.count('class="mlc-row"') == 5 and all(f"{m}:" in plot for m in methods)  # top-5 bars per method
    assert set(labels) == set(methods)


# -- endpoints --------------------------------------------------------------------------------------
def test_every_handler_is_a_named_endpoint(client):
    api = client.view_api(return_format="dict", print_info=False)["named_endpoints"]
    params = {name: [p["parameter_name"] for p in spec["parameters"]] for name, spec in api.items()}
    assert params == {
        "/predict": ["image", "threshold", "top_k", "thresholds"],
        "/explain": ["image", "class_name", "explainer", "scaling"],
        "/flip_consistency": ["image", "method", "class_name"],
        "/graph_effect": ["image"],
        "/per_class_ap": [],
        "/what_models_see": [],
        "/label_graph": ["method", "tau", "p"],
        "/classifier_tsne": [],
    }  # no /load_models: the models are the operator's choice (opt-in: test_visitor_loads_...)
    returns = [r["label"] for spec in api.values() for r in spec["returns"]]
    assert all(label and not label.startswith("value_") for label in returns), returns  # every output named


def test_predict_table_sorted_by_mean_with_labels_at_threshold(client, photo):
    result = predict(client, photo, threshold=0.5, top_k=5)
    assert_good_prediction(result)
    status, table, _, labels, _ = result
    rows = table["data"]
    means = [row[-1] for row in rows]
    assert means == sorted(means, reverse=True)
    for row in rows:
        assert all(0.0 <= v <= 1.0 for v in row[1:])
        assert row[-1] == pytest.approx(np.mean(row[1:-1]), abs=2e-3)
    for i, method in enumerate(VARIANTS, start=1):  # the table is rounded to 3 decimals: allow ties
        score = {r[0]: r[i] for r in rows}
        fifth = sorted(score.values(), reverse=True)[4]
        assert len(labels[method]) <= 5
        assert all(score[c] >= 0.4995 and score[c] >= fifth for c in labels[method])
        assert {c for c, v in score.items() if v > fifth and v > 0.5005} <= set(labels[method])
    assert f"**{rows[0][0]}**" in status


def test_predict_threshold_and_top_k(client, photo):
    _, _, _, everything, _ = predict(client, photo, threshold=0.0, top_k=3)
    assert all(len(v) == 3 for v in everything.values())
    _, _, _, nothing, grid = predict(client, photo, threshold=1.0, top_k=20)
    assert all(v == [] for v in nothing.values())
    assert grid.count("nothing above the threshold") == len(VARIANTS)


def test_explain_overlays_every_method_for_the_top_class(client, photo):
    from gradio_client import handle_file

    top = predict(client, photo)[1]["data"][0][0]
    status, gallery = client.predict(handle_file(str(photo)), None, api_name="/explain")
    assert f"**{top}**" in status and "top-scoring" in status
    assert len(gallery) == 5
    for item, method in zip(gallery, VARIANTS):
        assert item["caption"].startswith(f"{method} - {MAP_KINDS[method]} ")
        with Image.open(item["image"]) as overlay:
            assert overlay.mode == "RGB" and overlay.size == (448, 336)  # the photo's aspect, not squashed


def test_explain_chosen_and_unknown_class(client, photo):
    from gradio_client import handle_file

    status, gallery = client.predict(handle_file(str(photo)), "dog", api_name="/explain")
    assert "**dog**" in status and len(gallery) == 5
    with pytest.raises(AppError, match="Unknown class 'unicorn'"):
        client.predict(handle_file(str(photo)), "unicorn", api_name="/explain")


def test_explain_offers_grad_cam_for_every_method(client, photo):
    from gradio_client import handle_file

    status, gallery = client.predict(handle_file(str(photo)), "dog", "grad-cam", "shared", api_name="/explain")
    assert len(gallery) == len(VARIANTS) and all(" - Grad-CAM - " in item["caption"] for item in gallery)
    assert "Grad-CAM for every method" in status and "share one colour scale" in status
    status, gallery = client.predict(handle_file(str(photo)), "dog", api_name="/explain")  # defaults
    assert [item["caption"].split(" - ")[1] for item in gallery] == [MAP_KINDS[m] for m in VARIANTS]
    assert "its own colour scale" in status
    with pytest.raises(AppError, match="explainer must be one of own, grad-cam"):
        client.predict(handle_file(str(photo)), "dog", "lime", api_name="/explain")


def test_flip_consistency_images_and_scores(client, photo):
    from gradio_client import handle_file

    status, gallery, table = client.predict(handle_file(str(photo)), "ggnn", "cat", api_name="/flip_consistency")
    assert "**cat**" in status
    assert len(gallery) == 3
    assert "map of the image" in gallery[0]["caption"] and "flipped back" in gallery[1]["caption"]
    assert gallery[2]["caption"].startswith("difference")
    assert all(item["caption"].startswith("ggnn - Grad-CAM") for item in gallery[:2])
    assert table["headers"] == ["method", "map", "cosine", "L_A", "note"]
    assert [row[0] for row in table["data"]] == VARIANTS
    assert [row[1] for row in table["data"]] == [MAP_KINDS[m] for m in VARIANTS]
    for _, _, cosine, squared_error, note in table["data"]:
        assert squared_error >= 0.0
        assert (cosine is None and "empty map" in note) or (-1.0 - 1e-6 <= cosine <= 1.0 + 1e-6 and not note)
    with pytest.raises(AppError, match="Unknown method 'nope'"):
        client.predict(handle_file(str(photo)), "nope", "cat", api_name="/flip_consistency")
    _, gallery, _ = client.predict(handle_file(str(photo)), None, None, api_name="/flip_consistency")
    assert gallery[0]["caption"].startswith("gcam - CAM")  # the default: the method trained for it


def test_per_class_ap_matches_eval_json(client, checkpoints):
    status, seeds, table, plot = client.predict(api_name="/per_class_ap")
    assert "voc2007 test" in status and "interval excludes 0" in status
    report = json.loads((checkpoints / "report.json").read_text())
    assert [r[0] for r in seeds["data"]] == VARIANTS
    interval = next(h for h in seeds["headers"] if h.startswith("vs baseline"))
    ggnn = seeds["data"][1][seeds["headers"].index(interval)]
    c = report["bootstrap"]["comparisons"]["ggnn"]
    assert ggnn == f"{100 * c['difference']:+.2f} [{100 * c['low']:+.2f}, {100 * c['high']:+.2f}]"
    assert table["headers"] == ["class", *VARIANTS]
    rows = table["data"]
    assert [r[0] for r in rows] == [*VOC_CLASSES, "mAP"]
    metrics = json.loads((checkpoints / "mlgcn" / "eval.json").read_text())["metrics"]
    column = table["headers"].index("mlgcn")
    assert [r[column] for r in rows[:-1]] == pytest.approx([round(100 * v, 1) for v in metrics["ap"]], abs=0.051)
    assert rows[-1][column] == pytest.approx(100 * metrics["map"], abs=0.051)
    assert Image.open(plot).format == "PNG"


def test_what_the_models_see_shows_the_shipped_diagnostics(client, checkpoints):
    (status, table, plot, faith_plot, sanity, per_class, graph_plot, dis_status, dis_table, gallery) = client.predict(
        api_name="/what_models_see")
    assert Image.open(faith_plot).format == "PNG" and "Deletion / insertion" in status
    assert all(f"**{m}**" in sanity for m in VARIANTS) and "map depends on the model" in sanity
    rows_by = {r[0]: dict(zip(table["headers"], r)) for r in table["data"]}
    faith = json.loads((checkpoints / "mlgcn" / "eval.json").read_text())["diagnostics"]["faithfulness"]
    assert rows_by["mlgcn"]["deletion AUC (lower: faithful)"] == pytest.approx(faith["maps"]["own"]["deletion"]["auc"]["value"], abs=5e-4)
    assert rows_by["random map"]["insertion AUC (higher: faithful)"] is not None
    assert "Pointing game" in status and "12 evaluation images" in status
    rows = {r[0]: dict(zip(table["headers"], r)) for r in table["data"]}
    assert list(rows) == [*VARIANTS, "random map", "centre map"]
    for name in VARIANTS:
        d = json.loads((checkpoints / name / "eval.json").read_text())["diagnostics"]
        assert rows[name]["map"] == MAP_KINDS[name]
        assert rows[name]["pointing game (%)"] == pytest.approx(100 * d["localization"]["method"]["pointing"], abs=0.051)
        assert rows[name]["flip cosine"] == pytest.approx(d["flip"]["cosine"], abs=5e-4)
        if name == "baseline":
            assert rows[name]["graph's share (pp)"] is None
        else:
            assert rows[name]["graph's share (pp)"] == pytest.approx(100 * d["graph"]["difference"], abs=0.0051)
    centre = json.loads((checkpoints / "gcam" / "eval.json").read_text())["diagnostics"]["localization"]["centre"]
    assert rows["centre map"]["box energy (%)"] == pytest.approx(100 * centre["energy"], abs=0.051)
    assert per_class["headers"] == ["class", "ggnn", "ssgrl", "mlgcn", "gcam"]
    assert [r[0] for r in per_class["data"]] == VOC_CLASSES
    assert Image.open(plot).format == Image.open(graph_plot).format == "PNG"
    report = json.loads((checkpoints / "report.json").read_text())["disagreement"]
    assert [r[0] for r in dis_table["data"]] == [im["id"] for im in report["images"]]
    assert "MLC_DATA_ROOT" not in dis_status  # no data folder: the gallery is hidden, the hint goes to the log
    assert gallery["visible"] is False and not gallery["value"]


def test_disputed_images_come_from_the_operators_dataset_folder(checkpoints):
    from mlc.serving import seeing as insight
    from mlc.serving import ModelSet

    images = insight.disagreement_table(ModelSet({}, report=json.loads((checkpoints / "report.json").read_text())))[2]
    shown, note = insight.disagreement_gallery(images, str(voc_root(checkpoints)))
    on_disk = [im for im in images if int(im["id"]) < 12]  # the VOC tree holds the first 12 ids
    assert [caption.split(":")[0] for _, caption in shown] == [im["id"] for im in on_disk]
    assert all(picture.ndim == 3 and max(picture.shape[:2]) == 320 for picture, _ in shown)
    assert note == (f" {len(images) - len(on_disk)} of the images were not found in the dataset folder."
                    if len(on_disk) < len(images) else "")
    hostile = [{"id": "../../etc/passwd"}, {"id": "/etc/passwd"}]
    assert insight.disagreement_gallery(hostile, str(voc_root(checkpoints)))[0] == []


def test_graph_effect_compares_each_graph_method_with_and_without_its_graph(client, checkpoints, photo):
    import torch
    from gradio_client import handle_file

    from mlc.models import load_model
    from mlc.serving import load_image, model_input

    status, table = client.predict(handle_file(str(photo)), api_name="/graph_effect")
    assert "largest effect" in status
    headers, rows = table["headers"], table["data"]
    assert headers == ["method", "class", "with graph", "without graph", "change"]
    assert [r[0] for r in rows] == [m for m in ("ggnn", "ssgrl", "mlgcn", "gcam") for _ in range(3)]
    for k in range(0, 12, 3):  # each method's three largest changes, largest first
        changes = [abs(r[4]) for r in rows[k:k + 3]]
        assert changes == sorted(changes, reverse=True)
    method, cls = rows[3][0], rows[3][1]
    model = load_model(checkpoints / method)
    x = model_input(load_image(photo).image, model)
    with torch.no_grad():
        with_graph = torch.sigmoid(model(x))[0, VOC_CLASSES.index(cls)].item()
        with model.identity_graph():
            without = torch.sigmoid(model(x))[0, VOC_CLASSES.index(cls)].item()
    assert rows[3][2] == pytest.approx(with_graph, abs=2e-3) and rows[3][3] == pytest.approx(without, abs=2e-3)
    assert rows[3][4] == pytest.approx(rows[3][2] - rows[3][3], abs=2e-3)


@pytest.mark.parametrize("tau", [0.2, 0.4, 1.0])
def test_label_graph_counts_directed_edges(client, checkpoints, tau):
    config = json.loads((checkpoints / "gcam" / "config.json").read_text())
    stats = LabelStatistics.from_dict(config["label_stats"])
    binary = label_graph.threshold_adjacency(label_graph.conditional_probability(stats.counts, stats.cooccurrence), tau)
    status, heatmap, network = client.predict("gcam", tau, 0.25, api_name="/label_graph")
    assert f"keeps **{label_graph.count_edges(binary)}** directed edges" in status
    assert Image.open(heatmap).format == Image.open(network).format == "PNG"


def test_analysis_is_computed_once_per_model_set(client, monkeypatch):
    """Every Analysis figure and the t-SNE are computed on the first open and then served from
    memory (the time it takes is bench/app_latency.py's to measure, not a test's)."""
    from mlc import serving
    from mlc.serving import seeing

    made = []
    for module, name in ((serving, "ap_chart"), (serving, "cooccurrence_heatmap"), (serving, "graph_figure"),
                         (serving, "tsne_figure"), (serving.analysis, "classifier_embedding"), (seeing, "seeing_figure"),
                         (seeing, "graph_figure")):
        original = getattr(module, name)
        monkeypatch.setattr(module, name, lambda *a, _f=original, _n=f"{module.__name__}.{name}", **k:
                            made.append(_n) or _f(*a, **k))
    first = []
    for round_ in range(3):
        client.predict(api_name="/per_class_ap")
        client.predict(api_name="/what_models_see")
        client.predict(None, 0.4, 0.25, api_name="/label_graph")
        client.predict(api_name="/classifier_tsne")
        if round_ == 0:
            first = list(made)
    assert made == first  # nothing was computed again after the first open


def test_classifier_tsne(client):
    status, plot = client.predict(api_name="/classifier_tsne")
    assert "60 classifier vectors (baseline, mlgcn, gcam)" in status
    assert Image.open(plot).format == "PNG"


def test_load_models_is_off_unless_the_operator_opts_in(client, checkpoints):
    from gradio_client.exceptions import AppError as ClientError

    with pytest.raises((ClientError, ValueError)):
        client.predict(str(checkpoints), api_name="/load_models")


def test_two_requests_at_once(client, photo):
    from gradio_client import handle_file

    jobs = [client.submit(handle_file(str(photo)), 0.5, 5, api_name="/predict") for _ in range(2)]
    wait(jobs, timeout=120)
    for job in jobs:
        assert_good_prediction(job.result())


# -- bad input --------------------------------------------------------------------------------------
ERRORS = {
    "text": "not an image",
    "truncated": "truncated or corrupt",
    "huge_png": "Image too large (20000 x 20000, 400 MP)",
}
CONVERTED = {"gray": "", "rgba": "", "sixteen": "", "tiny": "only 1 x 1 pixels",
             "huge_jpeg": "14000 x 10000 image was downscaled"}


@pytest.mark.parametrize("kind", list(ERRORS))
def test_bad_image_gives_a_clear_message_and_the_app_keeps_serving(client, bad_images, photo, kind):
    with pytest.raises(AppError) as caught:
        predict(client, bad_images[kind])
    assert ERRORS[kind] in str(caught.value), str(caught.value)
    assert_clean(str(caught.value))
    assert_good_prediction(predict(client, photo))


@pytest.mark.parametrize("kind", list(CONVERTED))
def test_odd_image_is_converted_and_predicted(client, bad_images, photo, kind):
    result = predict(client, bad_images[kind])
    assert_good_prediction(result)
    assert CONVERTED[kind] in result[0]
    assert_good_prediction(predict(client, photo))


def test_bad_image_on_explain_and_flip(client, bad_images, photo):
    from gradio_client import handle_file

    with pytest.raises(AppError, match="truncated"):
        client.predict(handle_file(str(bad_images["truncated"])), None, api_name="/explain")
    text = handle_file(str(bad_images["text"]))
    with pytest.raises(AppError, match="not an image"):
        client.predict(text, "gcam", None, api_name="/flip_consistency")
    status, gallery = client.predict(handle_file(str(photo)), None, api_name="/explain")
    assert len(gallery) == 5


def test_missing_image_is_a_message(client):
    with pytest.raises(AppError, match="Upload an image first"):
        client.predict(None, 0.5, 5, api_name="/predict")


@pytest.mark.parametrize("threshold, top_k, expected", [("abc", 5, "threshold must be a number"),
                                                        (0.5, "many", "top_k must be a number"),
                                                        (7, 5, "threshold must be between 0 and 1")])
def test_wrong_types_through_the_api_get_a_message(client, photo, threshold, top_k, expected):
    with pytest.raises(AppError, match=expected):
        predict(client, photo, threshold=threshold, top_k=top_k)


# -- a broken checkpoint ----------------------------------------------------------------------------
def test_broken_checkpoint_is_reported_and_the_others_work(broken_checkpoints, broken_client, photo):
    from gradio_client import handle_file

    from mlc.serving import ModelSet, status_markdown

    status = status_markdown(ModelSet.load(broken_checkpoints))
    assert "4 of 5 loaded" in status
    assert "| ssgrl | **not loaded**" in status and "cannot be read as safetensors" in status
    assert str(broken_checkpoints) not in status  # the server's path is never shown
    working = [m for m in VARIANTS if m != "ssgrl"]
    assert_good_prediction(predict(broken_client, photo), working)
    _, gallery = broken_client.predict(handle_file(str(photo)), None, api_name="/explain")
    assert [item["caption"].split(" - ")[0] for item in gallery] == working
    _, _, table, _ = broken_client.predict(api_name="/per_class_ap")
    assert table["headers"] == ["class", *working]


def test_missing_variant_folder_is_reported(checkpoints, tmp_path):
    from mlc.serving import ModelSet

    for name in ("baseline", "gcam"):
        shutil.copytree(checkpoints / name, tmp_path / name)
    model_set = ModelSet.load(tmp_path)
    assert model_set.names == ["baseline", "gcam"]
    assert set(model_set.problems) == {"ggnn", "ssgrl", "mlgcn"}
    assert model_set.problems["ggnn"].startswith("missing")


def test_a_folder_that_is_one_model(checkpoints):
    from mlc.serving import ModelSet

    model_set = ModelSet.load(checkpoints / "ssgrl")
    assert model_set.names == ["ssgrl"] and not model_set.problems


# -- one shared backbone ----------------------------------------------------------------------------
def test_packaged_backbone_is_shared_and_runs_once_per_input(tmp_path):
    """Checkpoints without their (packaged, frozen) backbone share one module: one pass per input."""
    import torch

    from mlc.models import create_model
    from mlc.serving import ModelSet, class_maps, flip_views, model_input, predict_probabilities

    rng = np.random.default_rng(1)
    stats = label_statistics((rng.random((60, 20)) < 0.3).astype(np.int8), VOC_CLASSES)
    embeddings = rng.normal(size=(20, 8)).astype(np.float32)
    for name in ("baseline", "mlgcn"):
        create_model(name, classes=VOC_CLASSES, backbone="efficientnet_lite0", pretrained=True, label_stats=stats,
                     embeddings=embeddings).save(tmp_path / name)
    model_set = ModelSet.load(tmp_path)
    assert model_set.names == ["baseline", "mlgcn"]
    (shared,) = model_set.shared
    assert all(m.model.backbone is shared for m in model_set.methods.values())

    image = Image.open(write_photo(tmp_path / "photo.jpg"))
    table = predict_probabilities(model_set, image)
    assert shared.passes == 1
    reference = create_model("mlgcn", classes=VOC_CLASSES, backbone="efficientnet_lite0", pretrained=True,
                             label_stats=stats, embeddings=embeddings)
    reference.load_state_dict(model_set.methods["mlgcn"].model.state_dict(), strict=False)
    with torch.no_grad():
        expected = torch.sigmoid(reference.eval()(model_input(image, reference)))[0].numpy()
    assert table["mlgcn"].loc[VOC_CLASSES].to_numpy() == pytest.approx(expected, abs=1e-5)
    class_maps(model_set, image, None)
    assert shared.passes == 2
    flip_views(model_set, image, "mlgcn", None)
    assert shared.passes == 4  # the image and its mirror image


def test_top_finetuned_models_share_the_bottom_and_keep_their_own_top(tmp_path):
    """Checkpoints that fine-tuned only the top blocks ("top:15") share one pass of blocks 0-14 per
    input; each model's scores equal those of the model run on its own."""
    import torch

    from mlc.models import create_model, load_model
    from mlc.serving import ModelSet, model_input, predict_probabilities

    rng = np.random.default_rng(2)
    stats = label_statistics((rng.random((60, 20)) < 0.3).astype(np.int8), VOC_CLASSES)
    embeddings = rng.normal(size=(20, 8)).astype(np.float32)
    for i, name in enumerate(("baseline", "mlgcn")):
        model = create_model(name, classes=VOC_CLASSES, backbone="efficientnet_lite0", pretrained=True,
                             label_stats=stats, embeddings=embeddings)
        with torch.no_grad():  # a different fine-tuned top per model
            model.backbone.body.net.conv_head.weight.mul_(1.0 + 0.1 * (i + 1))
        model.backbone_trained = "top:15"
        model.save(tmp_path / name)
    create_model("ggnn", classes=VOC_CLASSES, backbone="efficientnet_lite0", pretrained=True, label_stats=stats,
                 embeddings=embeddings).save(tmp_path / "ggnn")  # frozen backbone: runs the shared bottom too
    model_set = ModelSet.load(tmp_path)
    (shared,) = model_set.shared
    image = Image.open(write_photo(tmp_path / "photo.jpg"))
    table = predict_probabilities(model_set, image)
    assert shared.passes == 1
    for name in ("baseline", "mlgcn", "ggnn"):
        alone = load_model(tmp_path / name)
        with torch.no_grad():
            expected = torch.sigmoid(alone(model_input(image, alone)))[0].numpy()
        assert table[name].loc[VOC_CLASSES].to_numpy() == pytest.approx(expected, abs=1e-5)
    assert "share `efficientnet_lite0` blocks 0-14" in serving_status(model_set)


def serving_status(model_set) -> str:
    from mlc.serving import status_markdown

    return status_markdown(model_set)


# -- a public Space: models are the operator's, visitors cannot change them ---------------------------
@pytest.fixture(scope="session")
def loading_client(checkpoints):
    with serve(checkpoint_dir=checkpoints, allow_loading=True) as url:
        yield url


@pytest.mark.slow
def test_visitor_loads_models_for_their_session_only(loading_client, checkpoints, tmp_path, photo):
    from gradio_client import Client

    other = write_checkpoints(tmp_path / "other", seed=7)
    first, second = Client(loading_client, verbose=False), Client(loading_client, verbose=False)
    before = predict(second, photo)[1]["data"]
    status, *_ = first.predict(str(other), api_name="/load_models")
    assert "5 of 5 loaded" in status and str(other) not in status
    assert predict(first, photo)[1]["data"] != before  # the first visitor sees the models they loaded
    assert predict(second, photo)[1]["data"] == before  # nobody else does
    assert predict(Client(loading_client, verbose=False), photo)[1]["data"] == before


def test_a_visitors_failed_load_tells_nothing_about_the_server(loading_client):
    from gradio_client import Client

    client = Client(loading_client, verbose=False)
    messages = []
    for source in ("/etc", "/no/such/folder", "../../", "no-such-user/no-such-repo"):
        with pytest.raises(AppError) as caught:
            client.predict(source, api_name="/load_models")
        messages.append(str(caught.value))
    for message in messages:
        assert "/etc" not in message and "/no/such" not in message and "Still serving 5" in message
    assert messages[0].replace("/etc", "") == messages[1].replace("/no/such/folder", "")  # exists or not: alike


def test_class_names_from_a_checkpoint_are_shown_as_text(tmp_path, photo):
    from mlc.models import create_model
    from mlc.serving import ModelSet

    import app

    classes = ["[x](http://evil.example)", "<img src=x onerror=alert(1)>", "*bold*"]
    model = create_model("baseline", classes=classes, backbone="tiny", pretrained=False).eval()
    handlers = app.Handlers(ModelSet.from_models({"baseline": model}))
    status, _, _, _, grid = handlers.predict(str(photo), 0.0, 3)
    assert "](http" not in status.replace("\\](", "") and "<img" not in status
    assert "<img" not in grid and "&lt;img src=x" in grid
    explain_status, _ = handlers.explain(str(photo), classes[0])
    assert "\\[x\\]\\(http://evil.example\\)" in explain_status


def test_upload_over_the_size_limit_is_refused_at_upload(client, tmp_path):
    from gradio_client import handle_file

    import app

    big = tmp_path / "big.jpg"
    limit_mb = int(app.MAX_UPLOAD.rstrip("mb"))
    big.write_bytes(b"\xff\xd8\xff" + b"\0" * (limit_mb + 1) * 2**20)
    with pytest.raises(Exception, match="(?i)(too large|exceeds|maximum|size)"):
        client.predict(handle_file(str(big)), 0.5, 5, api_name="/predict")


def test_maps_of_one_kind_share_a_scale_and_unpredicted_ones_are_marked(tmp_path):
    from mlc.serving import ClassMap, explanation_gallery

    image = Image.open(write_photo(tmp_path / "p.jpg", (320, 240)))
    strong = np.array([[0.0, 2.0], [1.0, -1.0]], dtype=np.float32)
    maps = [ClassMap("baseline", "CAM", strong, 0.9), ClassMap("mlgcn", "CAM", strong / 4, 0.8),
            ClassMap("gcam", "CAM", strong, 0.02), ClassMap("ggnn", "Grad-CAM", np.zeros((2, 2), np.float32), 0.1)]
    items = explanation_gallery(image, maps, "shared")
    (a, ca), (b, cb), (c, cc), (d, cd) = items
    assert a.shape[:2] == (336, 448) == b.shape[:2]  # the whole image, its aspect kept
    assert not np.array_equal(a, b)  # a weaker map of the same kind looks weaker (own-range scaling hid it)
    assert "not predicted" in cc and "not predicted" not in ca
    assert c.mean() > a.mean()  # dimmed
    assert "empty" in cd and cd.startswith("ggnn - Grad-CAM")
    (a2, _), (b2, _), *_ = explanation_gallery(image, maps, "per-map")  # each to its own maximum
    top = slice(0, 280)  # above the colour bar, whose end value differs
    assert np.array_equal(a2[top], b2[top]) and np.array_equal(a2[top], a[top])
    with pytest.raises(ValueError, match="scaling must be one of per-map, shared"):
        explanation_gallery(image, maps, "loudest")


def test_per_class_thresholds_by_default_the_slider_as_override_and_the_out_of_class_notice(tmp_path, tiny_setup):
    from conftest import tiny_model

    from mlc.calibration import Calibration
    from mlc.serving import ModelSet
    from mlc.serving.handlers import Handlers

    photo = str(write_photo(tmp_path / "p.jpg"))
    models = {name: tiny_model(name, tiny_setup) for name in ("baseline", "mlgcn", "gcam")}
    classes = tiny_setup["classes"]
    handlers = Handlers(ModelSet.from_models(models))
    _, table, _, at_half, _ = handlers.predict(photo, 0.5, 20)  # before calibration: 0.5 for every class
    probs = {row["class"]: row for row in table.to_dict("records")}
    for name, model in models.items():  # thresholds just under / over each class's score: known labels
        thresholds = [max(0.0, probs[c][name] - 0.01) if k % 2 == 0 else min(1.0, probs[c][name] + 0.01)
                      for k, c in enumerate(classes)]
        model.calibration = Calibration(classes, thresholds, [20] * len(classes), 100, "joint_energy",
                                        ood_threshold=1e9 if name == "baseline" else -1e9)
    status, _, chart, labels, grid = handlers.predict(photo, None, 20)  # no threshold: per-class
    expected = [c for k, c in enumerate(classes) if k % 2 == 0]
    assert all(sorted(labels[n]) == sorted(expected) for n in models), labels
    assert "per-class threshold" in grid and "per-class thresholds" in chart
    assert "looks unlike what the models were trained on** (2 of 3 methods" in status  # mlgcn, gcam flag it
    _, _, _, global_labels, _ = handlers.predict(photo, 0.5, 20, "global")  # the slider overrides
    assert global_labels == at_half
    assert handlers.predict(photo, 0.5, 20, "per-class")[3] == labels
    with pytest.raises(Exception, match="thresholds must be 'per-class' or 'global'"):
        handlers.predict(photo, 0.5, 20, "sometimes")
