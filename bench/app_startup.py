"""Start-up and Analysis-tab times of the app, as a visitor meets them.

Usage: python bench/app_startup.py [--checkpoints checkpoints] [--runs 3]

Each run starts ``python app.py`` as a fresh process on a free local port and times the first page
served (HTTP 200 on /), then opens the Analysis tab through the API the page calls (per_class_ap,
what_models_see, label_graph, classifier_tsne, in that order) twice: the first open computes the
figures, the second is served from memory. Prints a Markdown table; run it on an idle machine.
"""
from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ANALYSIS = (("/per_class_ap", ()), ("/what_models_see", ()), ("/label_graph", (None, 0.4, 0.25)),
            ("/classifier_tsne", ()))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_page(url: str, process: subprocess.Popen, limit: float = 180.0) -> float:
    """Seconds until ``url`` answers 200 (the process is polled so a crash fails at once)."""
    start = time.perf_counter()
    while time.perf_counter() - start < limit:
        if process.poll() is not None:
            raise RuntimeError(f"app.py exited with {process.returncode} before serving a page")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return time.perf_counter() - start
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"no page at {url} within {limit:.0f} s")


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
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1",
           "MLC_CHECKPOINTS": args.checkpoints}
    rows = []
    for run in range(args.runs):
        port = free_port()
        env["GRADIO_SERVER_PORT"], env["GRADIO_SERVER_NAME"] = str(port), "127.0.0.1"
        process = subprocess.Popen([sys.executable, str(ROOT / "app.py")], cwd=ROOT, env=env,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            url = f"http://127.0.0.1:{port}/"
            first_page = wait_for_page(url, process)
            rows.append((run + 1, first_page, open_analysis(url), open_analysis(url)))
        finally:
            process.terminate()
            process.wait(timeout=30)
    print("| run | first page (s) | Analysis, first open (s) | Analysis, second open (s) |")
    print("|---|---:|---:|---:|")
    for run, page, first, second in rows:
        print(f"| {run} | {page:.1f} | {first:.2f} | {second:.2f} |")
    print("\nAnalysis times are four API calls through gradio_client (~0.1-0.2 s of client polling each).")


if __name__ == "__main__":
    main()
