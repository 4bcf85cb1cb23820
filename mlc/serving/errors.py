"""The one exception a request's mistake raises: its text is shown to the visitor as is."""
from __future__ import annotations


class RequestError(ValueError):
    """A request the app cannot serve (bad image, unknown class, no model); the message is shown as is."""
