"""Which file a request may name as its image: only what this server wrote for a visitor.

Gradio checks the files of its own components against its upload cache, but only for payloads that
carry FileData's ``meta``; a bare ``{"path": ...}`` reaches the handler unchecked. Here every image
payload is checked with Gradio's own rule (``gradio.utils.is_allowed_file`` against its upload
folder), whatever its shape, and a data URL is held to the upload cap before it is decoded.
"""
from __future__ import annotations

import base64
import binascii
import re
import tempfile
from pathlib import Path
from typing import Any, Callable

from mlc.serving.errors import RequestError

MAX_UPLOAD_BYTES = 15 * 2**20  # the cap Gradio applies at /upload; data URLs are held to it too
NOT_AN_UPLOAD = "image must be a file uploaded to this app (or one of its examples); other paths are refused."
_DATA_URL = re.compile(r"data:(image/[\w.+-]+)?(;[\w=.+-]+)*;base64,", re.IGNORECASE)


def upload_folder() -> Path:
    """Gradio's upload cache, where uploads, examples and the app's own outputs are written."""
    from gradio.processing_utils import get_upload_folder

    return Path(get_upload_folder())


def is_upload(path: str) -> bool:
    """Gradio's own check (symlinks resolved, ``..`` normalised): inside the upload folder."""
    from gradio import utils

    allowed, _ = utils.is_allowed_file(utils.abspath(path), blocked_paths=[], allowed_paths=[],
                                       created_paths=[upload_folder()])
    return allowed


def decode_data_url(url: str, folder: Path, keep: Callable[[str], None] | None = None,
                    limit: int = MAX_UPLOAD_BYTES) -> str:
    """A ``data:image/...;base64,`` URL written to a file in ``folder``; refused before decoding
    when its payload would exceed ``limit`` (base64 is 4 characters for 3 bytes). ``keep``
    registers the file with Gradio's cache cleanup, as uploads are."""
    match = _DATA_URL.match(url[:200])
    if not match:
        raise RequestError("image: a data URL must be data:image/<type>;base64,<data>.")
    encoded = len(url) - match.end()
    if encoded * 3 // 4 > limit:
        raise RequestError(f"The image is {encoded * 3 / 4 / 2**20:.0f} MB; the limit is {limit / 2**20:.0f} MB.")
    try:
        data = base64.b64decode(url[match.end():], validate=True)
    except (binascii.Error, ValueError):
        raise RequestError("image: the data URL is not valid base64.") from None
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=folder, prefix="data-url-", suffix=".img", delete=False) as f:
        f.write(data)
    if keep is not None:
        keep(f.name)
    return f.name


def upload_path(payload: Any, folder: Path | None = None, keep: Callable[[str], None] | None = None) -> str | None:
    """The path of the image a request names, after checking that the server wrote it.

    ``payload`` is the raw JSON value (Gradio's validation is skipped so that a wrong type gets a
    message naming it). A path outside the upload folder gets one message, the same whether or
    not the file exists, so the answer tells nothing about the server's files.
    """
    if payload is None:
        return None
    if hasattr(payload, "model_dump"):
        payload = payload.model_dump()
    if not isinstance(payload, dict):
        raise RequestError(f"image must be an uploaded image file (a file reference from the upload API or "
                           f"gradio_client.handle_file), got {type(payload).__name__}.")
    path, url = payload.get("path"), payload.get("url")
    if path is None and isinstance(url, str) and url[:5].lower() == "data:":
        return decode_data_url(url, folder or upload_folder(), keep)
    if not isinstance(path, str) or not path:
        raise RequestError("image must be an uploaded image file; this one names no file.")
    if not is_upload(path):
        raise RequestError(NOT_AN_UPLOAD)
    return path


class _BodyTooLarge(Exception):
    pass


def limit_request_body(max_bytes: int, paths: tuple[str, ...] = ("/queue/join", "/call/")) -> Callable:
    """ASGI middleware: a POST to the queue API whose body exceeds ``max_bytes`` is refused with 413
    while it arrives, before it is parsed (a 56 MB JSON body grew the app by 167 MB in its parser).
    Uploads have their own cap at ``/upload``; this one holds inline data (data URLs) to it."""
    import json

    async def refuse(send: Callable) -> None:
        body = json.dumps({"detail": f"Request body over {max_bytes / 2**20:.0f} MB; images over "
                                     f"{MAX_UPLOAD_BYTES / 2**20:.0f} MB are refused."}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    def middleware(app: Callable) -> Callable:
        async def limited(scope: dict, receive: Callable, send: Callable) -> None:
            if scope.get("type") != "http" or scope.get("method") != "POST" or not any(
                    p in scope.get("path", "") for p in paths):
                return await app(scope, receive, send)
            length = dict(scope.get("headers") or []).get(b"content-length")
            if length is not None and length.isdigit() and int(length) > max_bytes:
                return await refuse(send)
            received = 0

            async def counted() -> dict:
                nonlocal received
                message = await receive()
                if message.get("type") == "http.request":
                    received += len(message.get("body", b""))
                    if received > max_bytes:
                        raise _BodyTooLarge
                return message

            try:
                await app(scope, counted, send)
            except _BodyTooLarge:  # raised while the body is read: no response has started
                await refuse(send)

        return limited

    return middleware
