"""A second visitor's wait while one client bursts 40 requests at the app.

Usage: python bench/app_fairness.py [--checkpoints checkpoints] [--app-root .] [--burst 40]

Starts ``app.py`` (of ``--app-root``: point it at another checkout to compare) as its own process.
The greedy client sends ``--burst`` predict requests at once from threads and re-sends every one the
app refuses (a full queue, or its per-client cap) 50 ms later, so it keeps the queue as full as the
app lets it. Meanwhile a second visitor sends one request at a time; its wait is from its first try
to the result (refusals and retries included). Clients are told apart by a header
(``MLC_CLIENT_HEADER=x-bench-client``), since every request here comes from 127.0.0.1.
"""
from __future__ import annotations

import argparse
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from app_process import ROOT, app_process  # bench/ is on sys.path when a bench runs as a script

sys.path[:0] = [str(ROOT), str(ROOT / "tests")]  # the raw-HTTP helper of the hostile-input tests


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoints", type=Path, default=ROOT / "checkpoints")
    parser.add_argument("--app-root", type=Path, default=ROOT)
    parser.add_argument("--burst", type=int, default=40)
    args = parser.parse_args()
    import httpx

    from test_app_hostile import result

    image = (ROOT / "examples" / "living_room.jpg").read_bytes()
    with app_process(args.checkpoints, root=args.app_root, env={"MLC_CLIENT_HEADER": "x-bench-client"}) as (_, url, _):
        path = httpx.post(f"{url}gradio_api/upload", files={"files": ("p.jpg", image)}).json()[0]
        data = [{"path": path, "meta": {"_type": "gradio.FileData"}}, 0.5, 5, "global"]
        inputs = len(httpx.get(f"{url}gradio_api/info").json()["named_endpoints"]["/predict"]["parameters"])
        body = {"data": data[:inputs]}  # an older checkout's predict takes three inputs

        def request(client: str) -> tuple[float, int]:
            """Seconds from the first try to the result, and the number of refusals."""
            start, refused = time.perf_counter(), 0
            while True:
                r = httpx.post(f"{url}gradio_api/call/predict", json=body, headers={"x-bench-client": client}, timeout=60)
                if r.status_code == 200:
                    break
                refused += 1
                time.sleep(0.05)
            kind, _ = result(url, "predict", r.json()["event_id"], timeout=600)
            assert kind == "complete", kind
            return time.perf_counter() - start, refused

        solo = [request("visitor")[0] for _ in range(5)]
        done = threading.Event()
        waits: list[float] = []

        def visitor() -> None:
            while not done.is_set():
                waits.append(request("visitor")[0])
                time.sleep(0.2)

        watcher = threading.Thread(target=visitor)
        start = time.perf_counter()
        with ThreadPoolExecutor(args.burst) as pool:
            futures = [pool.submit(request, "greedy") for _ in range(args.burst)]
            time.sleep(0.5)  # the burst is queued first
            watcher.start()
            greedy = [f.result() for f in futures]
        burst_seconds = time.perf_counter() - start
        done.set()
        watcher.join()
    print(f"app: {args.app_root}; one predict alone: median {np.median(solo):.2f} s; the burst of {args.burst} took "
          f"{burst_seconds:.1f} s ({sum(r for _, r in greedy)} refusals re-sent).\n")
    print("| second visitor during the burst | value |")
    print("|---|---:|")
    print(f"| requests | {len(waits)} |")
    print(f"| wait, median (s) | {np.median(waits):.2f} |")
    print(f"| wait, p95 (s) | {np.percentile(waits, 95):.2f} |")
    print(f"| wait, max (s) | {max(waits):.2f} |")


if __name__ == "__main__":
    main()
