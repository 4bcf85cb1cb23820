"""The versions of the project's on-disk formats, and the one check a reader makes of them.

``config.json`` (a saved model) and ``eval.json`` (a run's evaluation) carry ``format_version``.
A file without one was written before versions existed (version 1, read as is); a file from a
newer mlc gets a clear message instead of a failure deep inside. CHANGELOG.md lists what changed.
"""
from __future__ import annotations

from typing import Any, Mapping

CONFIG_FORMAT = 1  # config.json (mlc.models.base)
EVAL_FORMAT = 1  # eval.json (train.evaluation); additions (new keys) keep the version


class FormatError(ValueError):
    """A file written by a newer mlc than this one."""


def check_format(data: Mapping[str, Any], kind: str, supported: int, where: str = "") -> int:
    """The file's format version (1 when absent); refuses a newer one with a message naming both."""
    version = data.get("format_version", 1)
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise FormatError(f"{where or kind}: format_version must be a whole number >= 1, got {version!r}")
    if version > supported:
        raise FormatError(f"{where or kind} is {kind} format {version}, written by a newer mlc; this one reads "
                          f"up to format {supported}: upgrade mlc (pip install -U mlc, or pull the repo)")
    return version
