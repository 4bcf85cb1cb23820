"""Memory under a burst of large uploads: the app's RSS before, at peak and after.

Usage: python bench/app_burst.py [--checkpoints checkpoints] [--images 6] [--megapixels 40]

Starts ``app.py`` as its own process on localhost, sends ``--images`` noisy PNGs of ``--megapixels``
each at once, spread over predict, explain and flip consistency (PNG cannot be decoded at reduced
scale, so each costs a full decode), samples the server's RSS every 20 ms from /proc, and prints a
table. Targets (issue 11): the peak at most 1 GB above the idle RSS, and the RSS back within 300 MB
of it afterwards. An image over the app's megapixel limit is refused before its pixels are decoded.
"""
from __future__ import annotations

import argparse
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from app_process import ROOT, app_process  # bench/ is on sys.path when a bench runs as a script


def rss_mb(pid: int) -> float:
    """Resident memory of a process and its children (the app forks none, but be exact)."""
    total = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            total += int(line.split()[1])
    return total / 1024


def noisy_png(path: Path, megapixels: float, seed: int) -> Path:
    """A 4:3 PNG of ``megapixels`` whose noise keeps it from compressing to nothing."""
    width = int((megapixels * 1e6 * 4 / 3) ** 0.5)
    height = int(megapixels * 1e6 / width)
    rng = np.random.default_rng(seed)
    tile = rng.integers(0, 256, size=(256, 256, 3), dtype=np.uint8)
    pixels = np.tile(tile, (height // 256 + 1, width // 256 + 1, 1))[:height, :width]
    Image.fromarray(pixels).save(path, compress_level=1)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoints", type=Path, default=ROOT / "checkpoints")
    parser.add_argument("--images", type=int, default=6)
    parser.add_argument("--megapixels", type=float, default=40)
    parser.add_argument("--settle", type=float, default=10.0, help="seconds to wait after the burst")
    args = parser.parse_args()

    folder = Path(os.environ.get("TMPDIR", "/tmp")) / "mlc-burst"
    folder.mkdir(exist_ok=True)
    images = [noisy_png(folder / f"big{i}.png", args.megapixels, i) for i in range(args.images)]
    with app_process(args.checkpoints) as (proc, url, started):
        from gradio_client import Client, handle_file

        client = Client(url, verbose=False)
        warm = str(ROOT / "examples" / "grace_hopper.jpg")
        client.predict(handle_file(warm), 0.5, 5, api_name="/predict")  # the first request warms caches
        time.sleep(2)
        idle = rss_mb(proc.pid)
        peak, stop = [idle], threading.Event()

        def sample() -> None:
            while not stop.is_set():
                peak.append(rss_mb(proc.pid))
                time.sleep(0.02)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        calls = [("/predict", lambda p: (handle_file(p), 0.5, 5)), ("/explain", lambda p: (handle_file(p), None)),
                 ("/flip_consistency", lambda p: (handle_file(p), None, None))]

        def send(i: int) -> str:
            api, params = calls[i % len(calls)]
            try:
                Client(url, verbose=False).predict(*params(str(images[i])), api_name=api)
                return f"{api}: ok"
            except Exception as err:  # a refusal is a result too
                return f"{api}: {str(err).splitlines()[0][:100]}"

        start = time.perf_counter()
        with ThreadPoolExecutor(len(images)) as pool:
            outcomes = list(pool.map(send, range(len(images))))
        burst = time.perf_counter() - start
        time.sleep(args.settle)
        stop.set()
        sampler.join()
        after = rss_mb(proc.pid)

    size = images[0].stat().st_size / 2**20
    print(f"{args.images} PNGs of {args.megapixels:g} MP ({size:.0f} MB each) at once over predict / explain / flip; "
          f"app up in {started:.1f} s; burst answered in {burst:.1f} s.\n")
    print("| RSS of the app | MB |")
    print("|---|---:|")
    print(f"| idle (after one request) | {idle:.0f} |")
    print(f"| peak during the burst | {max(peak):.0f} |")
    print(f"| {args.settle:g} s after the burst | {after:.0f} |")
    print(f"| peak - idle (target <= 1024) | {max(peak) - idle:.0f} |")
    print(f"| after - idle (target <= 300) | {after - idle:.0f} |")
    print("\nAnswers: " + "; ".join(outcomes))


if __name__ == "__main__":
    main()
