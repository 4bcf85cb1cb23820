"""The app's input components, patched so that every value reaches the handlers checked by us.

Gradio validates API values before a handler runs and answers a wrong type with an anonymous error
(``{"error": null}``), and it opens uploads with PIL first; these components hand the raw value to
``mlc.serving.uploads`` (images) or to the handler (numbers, text), which name what is wrong.
"""
from __future__ import annotations

import types
from pathlib import Path
from typing import Any

import gradio as gr

from mlc.serving import uploads
from mlc.serving.errors import RequestError


def _upload_path(component: gr.Image, payload: Any) -> str | None:
    """The image's path, checked (``mlc.serving.uploads``), without opening it."""
    try:
        return uploads.upload_path(payload, Path(component.GRADIO_CACHE), keep=component.temp_files.add)
    except RequestError as err:
        raise gr.Error(str(err), print_exception=False) from None


def image_input(**kwargs: Any) -> gr.Image:
    """A ``gr.Image`` whose handler gets the upload's path, checked and undecoded.

    Gradio's own preprocessing opens uploads with PIL before the handler runs, so a non-image file
    or a decompression bomb would fail there with a generic error; ``mlc.serving.load_image``
    decodes instead and explains every failure. Gradio's validation of the payload is turned off
    (after the API schema is cached, so clients still see an image input): ``_upload_path`` checks
    every payload, also those Gradio would let through unchecked (a bare ``{"path": ...}``), and
    names what is wrong. The instance is patched rather than subclassed because Gradio writes a
    ``.pyi`` stub beside any module defining a component.
    """
    image = gr.Image(type="filepath", **kwargs)
    image.api_info()  # cached: view_api keeps describing an image file
    image.data_model = None  # type: ignore[assignment]
    image.preprocess = types.MethodType(_upload_path, image)  # type: ignore[method-assign]
    return image


def _pass_through(component: gr.components.Component, payload: Any) -> Any:
    return payload


def checked_by_handler(component: gr.components.Component) -> gr.components.Component:
    """Let the handler validate this input (``_number`` / ``_text``): Gradio's own check of an API
    value answers a wrong type with an anonymous error, ours with a message naming the input."""
    component.preprocess = types.MethodType(_pass_through, component)  # type: ignore[method-assign]
    return component
