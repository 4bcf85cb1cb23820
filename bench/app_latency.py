"""The app's predict of every method over raw HTTP against one bare forward of the shipped model, interleaved.

Usage: python bench/app_latency.py [--checkpoints checkpoints] [--photos examples] [--rounds 10]

Starts ``app.py`` as its own process serving ``--checkpoints`` and uploads each photo once. Then, for
``--rounds`` rounds and each photo in turn, it times, one right after the other so that any change of
load on the machine hits all rows alike:

- a bare forward of the reference variant (the whole model: backbone and head, at its size, no app
  around it), with the app's torch thread count and with every core;
- predict of every method in this process (the shared bottom once, each method's top and head: what
  the models cost);
- predict over raw HTTP: POST the call, read its event stream to the end (queue, decode, tables, HTML).

Prints a Markdown table (median and p90) and HTTP predict / bare forward, the issue's acceptance (3x).
Time it on an idle machine.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

from app_process import (  # bench/ is on sys.path when a bench runs as a script
    OFFLINE,
    ROOT,
    app_process,
)

os.environ.update(OFFLINE)
sys.path.insert(0, str(ROOT))

import numpy as np
import torch

from mlc import serving
from mlc.models import load_model, reference_model

PHOTO_SUFFIXES = {".jpg", ".jpeg", ".png"}


def photos_under(paths: list[Path]) -> list[Path]:
    out = []
    for path in paths:
        out += sorted(p for p in path.iterdir() if p.suffix.lower() in PHOTO_SUFFIXES) if path.is_dir() else [path]
    if not out:
        raise SystemExit(f"no photos under {', '.join(map(str, paths))}")
    return out


def bare_forward(model: torch.nn.Module, x: torch.Tensor, threads: int) -> Callable[[], object]:
    def run() -> None:
        torch.set_num_threads(threads)
        with torch.no_grad():
            model(x)
    return run


def raw_http_predict(http, uploaded: str) -> Callable[[], object]:
    """predict over Gradio's REST API (no gradio_client, which polls): POST the call, read its event stream."""
    payload = {"data": [{"path": uploaded, "meta": {"_type": "gradio.FileData"}}, None, 5, "per-class"]}

    def run() -> None:
        event = http.post("/gradio_api/call/predict", json=payload).json()["event_id"]
        with http.stream("GET", f"/gradio_api/call/predict/{event}") as stream:
            for line in stream.iter_lines():
                if line.startswith("event: error"):
                    raise SystemExit("predict failed over HTTP")
                if line.startswith("event: complete"):
                    return
        raise SystemExit("predict's event stream ended without a result")
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoints", type=Path, default=ROOT / "checkpoints")
    parser.add_argument("--photos", type=Path, nargs="+", default=[ROOT / "examples"])
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    import httpx

    app_threads = serving.configure_threads()  # what the app process uses (the same rule)
    all_threads = len(os.sched_getaffinity(0))
    model_set = serving.ModelSet.load(args.checkpoints)
    if not model_set.methods:
        raise SystemExit(f"no model loads from {args.checkpoints}: {model_set.problems}")
    name = reference_model() if reference_model() in model_set.methods else model_set.names[0]
    reference = load_model(args.checkpoints / name).eval()  # a plain model, not the set's shared bottom
    photos = photos_under(args.photos)
    images = [serving.load_image(p).image for p in photos]
    inputs = [serving.model_input(im, reference) for im in images]

    rows: dict[str, list[float]] = {}
    labels = {
        "bare_app": f"bare forward of {name} ({reference.backbone_name} at {reference.image_size} px), {app_threads} thread(s)",
        "bare_all": f"bare forward of {name}, {all_threads} threads",
        "models": f"predict, the {len(model_set.methods)} models in process ({app_threads} thread(s))",
        "http": "predict over raw HTTP (the app)",
    }
    with app_process(args.checkpoints) as (_, url, _), httpx.Client(base_url=url, timeout=120) as http:
        uploaded = []
        for path in photos:
            with open(path, "rb") as f:
                uploaded.append(http.post("/gradio_api/upload", files={"files": (path.name, f)}).json()[0])
        calls = []
        for x, image, up in zip(inputs, images, uploaded):
            def models(image=image) -> None:
                torch.set_num_threads(app_threads)
                serving.predict(model_set, image)
            calls.append({"bare_app": bare_forward(reference, x, app_threads), "bare_all": bare_forward(reference, x, all_threads),
                          "models": models, "http": raw_http_predict(http, up)})
        for call in calls:  # warm-up: first requests build caches, threads, pages
            for fn in call.values():
                fn(), fn()
        for _ in range(args.rounds):
            for call in calls:
                for key, fn in call.items():
                    start = time.perf_counter()
                    fn()
                    rows.setdefault(key, []).append(time.perf_counter() - start)
    med = {k: 1000 * float(np.median(v)) for k, v in rows.items()}
    print(f"Models: {args.checkpoints} ({', '.join(model_set.names)}), {len(model_set.shared)} shared part(s); "
          f"{len(photos)} photos x {args.rounds} rounds, interleaved; {all_threads} cores, the app on {app_threads} "
          f"torch thread(s).\n")
    print("| request | median (ms) | p90 (ms) |")
    print("|---|---:|---:|")
    for key, label in labels.items():
        print(f"| {label} | {med[key]:.0f} | {1000 * np.percentile(rows[key], 90):.0f} |")
    print(f"\nHTTP predict of all {len(model_set.methods)} / bare forward (medians): "
          f"{med['http'] / med['bare_app']:.1f}x at the app's {app_threads} thread(s), "
          f"{med['http'] / med['bare_all']:.1f}x against {all_threads} threads (target: within 3x); "
          f"the models alone {med['models'] / med['bare_app']:.1f}x.")


if __name__ == "__main__":
    main()
