"""The app as a separate process on a free local port, for the benchmarks that time or measure it."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

ROOT = Path(__file__).resolve().parents[1]
OFFLINE = {"GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(url: str, proc: subprocess.Popen, timeout: float = 180) -> float:
    """Seconds until ``url`` answers 200; a process that exits first fails at once, with its stderr."""
    import httpx

    start = time.perf_counter()
    while time.perf_counter() - start < timeout:
        if proc.poll() is not None:
            raise SystemExit(f"the app exited: {proc.stderr.read()[-2000:] if proc.stderr else ''}")
        try:
            if httpx.get(url, timeout=60).status_code == 200:  # a short timeout piles up renders of a slow first page
                return time.perf_counter() - start
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    proc.terminate()
    raise SystemExit(f"the app did not answer {url} in {timeout:.0f} s: {proc.communicate(timeout=30)[1][-2000:]}")


@contextmanager
def app_process(checkpoints: str | Path, root: Path = ROOT,
                env: dict[str, str] | None = None) -> Iterator[tuple[subprocess.Popen, str, float]]:
    """``python app.py`` of ``root`` (another checkout, to compare) serving ``checkpoints``:
    (process, url, seconds until the first page); stopped after."""
    port = free_port()
    env = {**os.environ, **OFFLINE, "PORT": str(port), "GRADIO_SERVER_NAME": "127.0.0.1",
           "MLC_CHECKPOINTS": str(checkpoints), **(env or {})}
    proc = subprocess.Popen([sys.executable, str(Path(root) / "app.py")], env=env, cwd=root,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        url = f"http://127.0.0.1:{port}/"
        yield proc, url, wait_for(url, proc)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
