"""Latency of the app's predict and explain requests (all five methods, at the models' size, CPU).

Usage: python bench/app_latency.py [--checkpoints checkpoints] [--requests 20] [--image examples/grace_hopper.jpg]
       [--backbone efficientnet_lite2 --image-size 448]   (the in-memory models, when no checkpoint loads)

Uses the models under ``--checkpoints`` when any loads; otherwise five models with the packaged
ImageNet backbone (``--backbone``, ``--image-size``) and untrained heads built in memory (random label statistics and
embeddings: the same compute as trained ones). Prints a Markdown table of median and p90 times for
three levels: the models alone, the handler (decode + models + figures), and a full HTTP request
through ``gradio_client`` against the app launched on localhost (PNG encoding and queue included).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Callable

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

import app  # noqa: E402
from app_process import free_port  # noqa: E402  (bench/ is on sys.path when a bench runs as a script)
from mlc import serving  # noqa: E402
from mlc.data import VOC_CLASSES  # noqa: E402
from mlc.models import create_model, list_models  # noqa: E402
from mlc.stats import label_statistics  # noqa: E402


def in_memory_models(seed: int = 0, backbone: str = "efficientnet_lite0", image_size: int = 224) -> serving.ModelSet:
    """The five variants with a packaged backbone at ``image_size`` px, heads untrained."""
    rng = np.random.default_rng(seed)
    stats = label_statistics((rng.random((500, len(VOC_CLASSES))) < 0.15).astype(np.int8), VOC_CLASSES)
    embeddings = rng.normal(size=(len(VOC_CLASSES), 50)).astype(np.float32)  # GloVe-50 sized
    models = {
        name: create_model(name, classes=VOC_CLASSES, backbone=backbone, pretrained=True, image_size=image_size,
                           label_stats=stats, embeddings=embeddings)
        for name in list_models()
    }
    return serving.ModelSet.from_models(models, source=f"in memory: {backbone} at {image_size} px, untrained heads")


def load_models(checkpoints: Path, backbone: str = "efficientnet_lite0", image_size: int = 224) -> serving.ModelSet:
    model_set = serving.ModelSet.load(checkpoints) if checkpoints.is_dir() else None
    if model_set is not None and model_set.methods:
        return model_set
    return in_memory_models(backbone=backbone, image_size=image_size)


def timings(fn: Callable[[], object], requests: int, warmup: int = 2) -> np.ndarray:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(requests):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return np.array(out)


def backbone_passes(model_set: serving.ModelSet, fn: Callable[[], object]) -> int:
    """How many times the shared backbone(s) ran during one call."""
    before = sum(b.passes for b in model_set.shared)
    fn()
    return sum(b.passes for b in model_set.shared) - before


def bare_forward(model_set: serving.ModelSet, image: Image.Image) -> Callable[[], object]:
    """The reference: one forward (at the model's size) of the shared backbone and one head, no app around it."""
    import torch

    name = model_set.names[0]
    model = model_set.methods[name].model
    x = serving.model_input(image, model)

    def run() -> None:
        with torch.no_grad():
            model.forward_head(model.forward_features(x))

    return run


def raw_http_predict(base: str, path: str) -> Callable[[], object]:
    """predict over Gradio's REST API without gradio_client (which polls, adding ~170 ms): upload
    once, then POST the call and read its event stream until it completes."""
    import httpx

    http = httpx.Client(base_url=base, timeout=120)
    with open(path, "rb") as f:
        uploaded = http.post("/gradio_api/upload", files={"files": (Path(path).name, f)}).json()[0]
    payload = {"data": [{"path": uploaded, "meta": {"_type": "gradio.FileData"}}, 0.5, 5, "global"]}

    def run() -> None:
        event = http.post("/gradio_api/call/predict", json=payload).json()["event_id"]
        with http.stream("GET", f"/gradio_api/call/predict/{event}") as stream:
            for line in stream.iter_lines():
                if line.startswith("event: error"):
                    raise SystemExit("predict failed over HTTP")
                if line.startswith("event: complete"):
                    break

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoints", type=Path, default=ROOT / "checkpoints")
    parser.add_argument("--requests", type=int, default=20)
    parser.add_argument("--image", type=Path, default=ROOT / "examples" / "grace_hopper.jpg")
    parser.add_argument("--backbone", default="efficientnet_lite0", help="in-memory models (no checkpoints)")
    parser.add_argument("--image-size", type=int, default=224, help="in-memory models (no checkpoints)")
    args = parser.parse_args()

    threads = serving.configure_threads()
    model_set = load_models(args.checkpoints, args.backbone, args.image_size)
    first = model_set.methods[model_set.names[0]].model
    bare_row = f"bare forward: shared backbone + one head, {first.backbone_name} at {first.image_size} px"
    handlers = app.Handlers(model_set)
    image = serving.load_image(args.image).image
    path = str(args.image)

    rows = {
        bare_row: timings(bare_forward(model_set, image), args.requests),
        "predict, models only": timings(lambda: serving.predict_probabilities(model_set, image), args.requests),
        "predict, handler": timings(lambda: handlers.predict(path, 0.5, 5), args.requests),
        "explain, models only": timings(lambda: serving.class_maps(model_set, image, None), args.requests),
        "explain, handler": timings(lambda: handlers.explain(path, None), args.requests),
    }
    demo = app.build_demo(model_set=model_set)
    port = free_port()
    app.launch(demo, port=port, server_name="127.0.0.1", prevent_thread_lock=True, quiet=True)
    try:
        from gradio_client import Client, handle_file

        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        rows["predict, HTTP request"] = timings(
            lambda: client.predict(handle_file(path), 0.5, 5, api_name="/predict"), args.requests)
        rows["explain, HTTP request"] = timings(
            lambda: client.predict(handle_file(path), None, api_name="/explain"), args.requests)
        rows["predict, raw HTTP (REST API, no client polling)"] = timings(
            raw_http_predict(f"http://127.0.0.1:{port}", path), args.requests)
    finally:
        demo.close()

    size = Image.open(args.image).size
    passes = [
        backbone_passes(model_set, lambda: serving.class_maps(model_set, image, None)),
        backbone_passes(model_set, lambda: serving.flip_views(model_set, image, model_set.names[0], None)),
    ]
    print(f"Models: {model_set.source} ({', '.join(model_set.names)}); {len(model_set.shared)} shared backbone(s) "
          f"running {backbone_passes(model_set, lambda: serving.predict_probabilities(model_set, image))} time(s) per "
          f"predict, {passes[0]} per explain, {passes[1]} per flip-consistency request; "
          f"{threads} torch threads; image {args.image.name} {size[0]}x{size[1]}; {args.requests} requests each.\n")
    print("| request (all methods) | median (ms) | p90 (ms) |")
    print("|---|---:|---:|")
    for name, t in rows.items():
        print(f"| {name} | {1000 * np.median(t):.0f} | {1000 * np.percentile(t, 90):.0f} |")
    bare = np.median(rows[bare_row])
    print(f"\npredict / bare forward (medians): handler {np.median(rows['predict, handler']) / bare:.1f}x, "
          f"raw HTTP {np.median(rows['predict, raw HTTP (REST API, no client polling)']) / bare:.1f}x, "
          f"gradio_client {np.median(rows['predict, HTTP request']) / bare:.1f}x (target: HTTP within 4x)")


if __name__ == "__main__":
    main()
