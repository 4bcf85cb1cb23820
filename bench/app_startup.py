"""Start-up and Analysis-tab times of the app, as a visitor meets them.

Usage: python bench/app_startup.py [--checkpoints checkpoints] [--runs 3]

Each run starts ``python app.py`` as a fresh process on a free local port and times the first page
served (HTTP 200 on /), then opens the Analysis tab through the API the page calls (per_class_ap,
what_models_see, label_graph, classifier_tsne, in that order) twice: the first open computes the
figures, the second is served from memory. Prints a Markdown table; run it on an idle machine.
"""
from __future__ import annotations

import argparse
import time

from app_process import ROOT, app_process  # bench/ is on sys.path when a bench runs as a script

ANALYSIS = (("/per_class_ap", ()), ("/what_models_see", ()), ("/label_graph", (None, 0.4, 0.25)),
            ("/classifier_tsne", ()))


def open_analysis(url: str) -> float:
    from gradio_client import Client

    client = Client(url, verbose=False)
    start = time.perf_counter()
    for api_name, args in ANALYSIS:
        client.predict(*args, api_name=api_name)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoints", default=str(ROOT / "checkpoints"))
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    rows = []
    for run in range(args.runs):
        with app_process(args.checkpoints) as (_, url, first_page):
            rows.append((run + 1, first_page, open_analysis(url), open_analysis(url)))
    print("| run | first page (s) | Analysis, first open (s) | Analysis, second open (s) |")
    print("|---|---:|---:|---:|")
    for run, page, first, second in rows:
        print(f"| {run} | {page:.1f} | {first:.2f} | {second:.2f} |")
    print("\nAnalysis times are four API calls through gradio_client (~0.1-0.2 s of client polling each).")


if __name__ == "__main__":
    main()
