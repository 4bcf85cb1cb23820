"""How the app is served: the queue (one model job at a time, fair between visitors), the limits on
requests, where it listens, and the page's CSS. ``app.py`` builds the page; this launches it."""
from __future__ import annotations

import os
from typing import Any

import gradio as gr

from mlc.serving import fair_queue, uploads

SERVER_CONCURRENCY = 1  # model requests at a time, all endpoints together (the cores are shared)
QUEUE_MAX = 16  # waiting requests; one more is told the app is busy
PER_CLIENT = 2  # waiting requests of one client (its address); served round-robin across clients
MAX_UPLOAD = f"{uploads.MAX_UPLOAD_BYTES // 2**20}mb"  # refused at upload, before any handler runs (data URLs: in the handler)

# Gradio's gallery takes one column count: on a phone, two maps a row instead of five side-scrolling
PHONE_CSS = ("@media (max-width: 640px) { #explain-gallery .grid-container, #flip-gallery .grid-container "
             "{ grid-template-columns: repeat(2, minmax(0, 1fr)) !important; } "
             "#image-row { flex-direction: column !important; } #image-row > * { width: 100% !important; } } "
             # wide tables scroll inside their own box instead of widening (or clipping) the page
             ".table-wrap, .table-container { max-width: 100%; overflow-x: auto !important; }")


def default_server_name() -> str:
    """Where to listen: ``GRADIO_SERVER_NAME`` if set; on a Hugging Face Space (``SPACE_ID``) every
    interface, as its proxy needs; else only this machine (127.0.0.1), as the README says."""
    return os.environ.get("GRADIO_SERVER_NAME") or ("0.0.0.0" if os.environ.get("SPACE_ID") else "127.0.0.1")


def launch(demo: gr.Blocks, port: int | None = None, server_name: str | None = None,
           client_key: fair_queue.ClientKey | None = None, **kwargs: Any) -> gr.Blocks:
    """Queue (``SERVER_CONCURRENCY`` model requests at a time over all endpoints, at most
    ``QUEUE_MAX`` waiting, at most ``PER_CLIENT`` of them from one client, served round-robin across
    clients, abandoned ones dropped: ``mlc.serving.fair_queue``) and serve, uploads capped at
    ``MAX_UPLOAD``; on ``default_server_name()`` and PORT / GRADIO_SERVER_PORT / 7860.

    ``client_key`` (a request -> a key) says who a request comes from; by default the peer
    address, or the header named by ``MLC_CLIENT_HEADER`` (X-Forwarded-For on a Space)."""
    from starlette.middleware import Middleware

    port = port or int(os.environ.get("PORT") or os.environ.get("GRADIO_SERVER_PORT") or 7860)
    server_name = server_name or default_server_name()
    kwargs.setdefault("max_file_size", MAX_UPLOAD)
    kwargs.setdefault("css", PHONE_CSS)
    demo.queue(default_concurrency_limit=SERVER_CONCURRENCY, max_size=QUEUE_MAX)
    tracker = fair_queue.StreamTracker()
    fair_queue.FairQueue.install(demo._queue, tracker, per_client=PER_CLIENT, client_key=client_key)
    app_kwargs = dict(kwargs.pop("app_kwargs", None) or {})
    body_limit = uploads.limit_request_body(uploads.MAX_UPLOAD_BYTES * 4 // 3 + 2**20)  # a capped data URL fits
    app_kwargs["middleware"] = [*app_kwargs.get("middleware", []), Middleware(tracker.middleware), Middleware(body_limit)]
    # _frontend=False skips Gradio's start-up probe of its own page (a HEAD with a 3 s timeout, meant
    # for notebooks), which kills the app when a busy machine renders the first page slower than that
    kwargs.setdefault("_frontend", False)
    demo.launch(server_name=server_name, server_port=port, app_kwargs=app_kwargs, **kwargs)
    return demo
