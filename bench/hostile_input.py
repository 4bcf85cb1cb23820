"""Hostile inputs against the running app: each one's answer and the app's peak memory growth.

Usage: python bench/hostile_input.py [--checkpoints checkpoints]

Starts ``app.py`` as its own process, then for each crafted input (header bombs, deep images, a
server path, a large data URL, and real photos that must keep working) resets the process's peak
RSS (``/proc/<pid>/clear_refs`` with 5), sends the request over raw HTTP, and reads ``VmHWM``:
the growth is the peak during that request above the RSS before it. Target (issue 16): every case
+< 500 MB, and a normal photo still predicted at the end. Linux only (reads /proc).
"""
from __future__ import annotations

import argparse
import io
import struct
import sys
import zlib
from pathlib import Path

import numpy as np
from app_process import (  # bench/ is on sys.path when a bench runs as a script
    ROOT,
    app_process,
)
from PIL import Image

sys.path[:0] = [str(ROOT), str(ROOT / "tests")]  # the raw-HTTP helper and header bombs of the hostile-input tests
from test_app_hostile import call, jpeg_declaring


def status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def png(width: int, height: int, depth: int) -> bytes:
    """Greyscale PNG of ``depth`` bits written row by row (no full-size buffer here)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    deflate = zlib.compressobj(9)
    row_bytes = (width * depth + 7) // 8
    row = b"\x00" + (bytes(range(256)) * (row_bytes // 256 + 1))[:row_bytes]
    data = b"".join(deflate.compress(row) for _ in range(height)) + deflate.flush()
    header = struct.pack(">IIBBBBB", width, height, depth, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b"")


def float_tiff(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    steps = np.repeat(np.linspace(0, 1, 8, dtype=np.float32), width // 8 + 1)[:width][None, :].repeat(height, 0)
    Image.fromarray(steps, mode="F").save(buffer, "TIFF", compression="tiff_deflate")
    return buffer.getvalue()


def photo(width: int, height: int, progressive: bool = False) -> bytes:
    """A smooth gradient with mild noise: a phone photo's size in pixels, and in bytes (< 15 MB)."""
    rng = np.random.default_rng(0)
    tile = rng.integers(0, 24, size=(64, 64, 3), dtype=np.uint8)
    pixels = np.tile(tile, (height // 64 + 1, width // 64 + 1, 1))[:height, :width]
    pixels += np.linspace(0, 200, width, dtype=np.float32).astype(np.uint8)[None, :, None]
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=85, progressive=progressive)
    return buffer.getvalue()


def cases() -> list[tuple[str, str, object]]:
    """(name, kind, content): kind "file" is uploaded, "path" and "data" are sent as the payload."""
    example = (ROOT / "examples" / "living_room.jpg").read_bytes()
    return [
        ("server file by path (/etc/hostname)", "path", "/etc/hostname"),
        ("progressive JPEG header, 50000 x 50000 (2 kB)", "file", jpeg_declaring(50000, 50000, True)),
        ("baseline JPEG header, 50000 x 50000 (2 kB)", "file", jpeg_declaring(50000, 50000, False)),
        ("progressive JPEG header, 9000 x 9000", "file", jpeg_declaring(9000, 9000, True)),
        ("1-bit PNG, 20000 x 20000", "file", png(20000, 20000, 1)),
        ("16-bit PNG, 6000 x 6000", "file", png(6000, 6000, 16)),
        ("float TIFF, 6000 x 6000", "file", float_tiff(6000, 6000)),
        ("data URL, 42 MB", "data", "data:image/jpeg;base64," + "A" * (56 * 2**20)),
        ("baseline JPEG photo, 8000 x 6000 (48 MP)", "file", photo(8000, 6000)),
        ("progressive JPEG photo, 6000 x 4500 (27 MP)", "file", photo(6000, 4500, progressive=True)),
        ("normal photo afterwards (living_room.jpg)", "file", example),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoints", type=Path, default=ROOT / "checkpoints")
    args = parser.parse_args()
    import httpx

    prepared = cases()
    with app_process(args.checkpoints) as (proc, url, _):
        warm = (ROOT / "examples" / "grace_hopper.jpg").read_bytes()
        uploaded = httpx.post(f"{url}gradio_api/upload", files={"files": ("w.jpg", warm)}).json()[0]
        call(url, "predict", [{"path": uploaded}, 0.5, 5, "global"])  # the first request warms caches
        rows = []
        for name, kind, content in prepared:
            if kind == "file":
                sent = httpx.post(f"{url}gradio_api/upload", files={"files": ("x.img", content)}, timeout=120)
                if sent.status_code != 200:
                    rows.append((name, f"refused at upload (HTTP {sent.status_code}, {len(content) / 2**20:.0f} MB)", 0.0))
                    continue
                payload = {"path": sent.json()[0], "meta": {"_type": "gradio.FileData"}}
            else:
                payload = {"path": content} if kind == "path" else {"url": content}
            Path(f"/proc/{proc.pid}/clear_refs").write_text("5")
            before = status_kb(proc.pid, "VmRSS")
            outcome, data = call(url, "predict", [payload, 0.5, 5, "global"], timeout=300)
            growth = (status_kb(proc.pid, "VmHWM") - before) / 1024
            answer = "predicted" if outcome == "complete" else str(data).split(". Please")[0][:90]
            rows.append((name, answer, growth))
        idle = status_kb(proc.pid, "VmRSS") / 1024
    print(f"App RSS after the run: {idle:.0f} MB. Growth = peak RSS during the request - RSS before it.\n")
    print("| hostile input | answer | peak RSS growth (MB) |")
    print("|---|---|---:|")
    for name, answer, growth in rows:
        print(f"| {name} | {answer} | {growth:.0f} |")
    worst = max(g for _, _, g in rows)
    print(f"\nWorst growth {worst:.0f} MB (target < 500); last photo: {rows[-1][1]}.")


if __name__ == "__main__":
    main()
