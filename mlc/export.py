"""ONNX export of a saved model, for inference without this library (onnxruntime, TensorRT, a browser).

The exported graph takes what an image library hands over, not what training feeds the network:
``images``, float32 of shape (batch, 3, S, S), RGB in [0, 1] (uint8 pixels / 255), S the model's
``image_size``, already resized to S x S (the evaluation transform resizes the whole image to a
square, no crop). The model's normalisation ((x - mean) / std) is inside the graph, so a caller
cannot get it wrong; the batch axis is dynamic. The output ``logits`` is (batch, C): apply a
sigmoid for per-class probabilities. Class names, image size and the per-class thresholds (when the
model has them) are stored in the ONNX metadata.

    from mlc.export import export_onnx
    export_onnx(load_model("checkpoints/mlgcn"), "mlgcn.onnx")
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mlc.models import MultiLabelModel

__all__ = ["ExportError", "ImagesToLogits", "check_onnx", "export_onnx", "onnx_metadata", "ONNX_OPSET", "TOLERANCE"]

ONNX_OPSET = 17
TOLERANCE = 1e-4  # max abs logit difference to PyTorch that export_onnx's check accepts
INPUT_NAME, OUTPUT_NAME = "images", "logits"


class ExportError(ValueError):
    """A model that cannot be exported, or whose export does not reproduce PyTorch; one line."""


class ImagesToLogits(nn.Module):
    """(B, 3, S, S) RGB in [0, 1] -> (B, C) logits: the model with its input normalisation in front,
    so the exported graph needs nothing from this library."""

    def __init__(self, model: MultiLabelModel):
        super().__init__()
        self.model = model
        norm = model.normalization
        self.register_buffer("mean", torch.tensor(norm.mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(norm.std, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model((images - self.mean) / self.std)


def onnx_metadata(model: MultiLabelModel, thresholds: list[float] | None = None) -> dict[str, str]:
    """What a consumer of the .onnx file needs besides the graph (ONNX metadata holds strings)."""
    meta = {
        "mlc_model_name": model.model_name,
        "classes": json.dumps(list(model.classes)),
        "image_size": str(model.image_size),
        "input": f"{INPUT_NAME}: float32 (batch, 3, {model.image_size}, {model.image_size}), RGB in [0, 1], "
                 "resized to a square; normalisation is inside the graph",
        "output": f"{OUTPUT_NAME}: float32 (batch, {model.num_classes}); sigmoid gives probabilities",
    }
    if thresholds is not None:
        meta["thresholds"] = json.dumps([float(t) for t in thresholds])
    return meta


def _first_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return f"{type(err).__name__}: {lines[0][:200]}" if lines else type(err).__name__


def export_onnx(model: MultiLabelModel, path: str | Path, *, opset: int = ONNX_OPSET, check: bool = True,
                thresholds: list[float] | None = None) -> dict[str, Any]:
    """Write ``model`` as ONNX to ``path``; with ``check`` (needs onnxruntime) compare it with
    PyTorch on a random batch of 3 (a size other than the traced 2, which tests the dynamic axis).

    Uses the TorchScript-based exporter: it needs no extra package (the dynamo exporter needs
    onnxscript) and handles every variant's head. Returns ``{"path", "max_abs_diff"}``
    (``max_abs_diff`` None without a check). Raises ``ExportError`` with one line on failure."""
    path = Path(path)
    if path.is_dir():
        raise ExportError(f"{path} is a folder; give a file name such as {path / (model.model_name + '.onnx')}")
    path.parent.mkdir(parents=True, exist_ok=True)
    wrapper = ImagesToLogits(model.float().eval()).eval()
    size = model.image_size
    example = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    tmp = path.with_name(f".{path.name}.partial")
    try:
        with warnings.catch_warnings(), torch.no_grad(), _quiet_output():
            warnings.simplefilter("ignore")  # the exporter's deprecation and tracer notes
            torch.onnx.export(
                wrapper, (example,), str(tmp), dynamo=False, opset_version=opset,
                input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            )
        _add_metadata(tmp, onnx_metadata(model, thresholds))
    except Exception as err:  # noqa: BLE001  (the exporter raises many kinds for an unsupported op)
        tmp.unlink(missing_ok=True)
        raise ExportError(f"{model.model_name} (backbone {model.backbone_name}) cannot be exported to ONNX: "
                          f"{_first_line(err)}") from None
    diff = None
    if check:
        try:
            diff = check_onnx(wrapper, tmp)
        except ExportError:
            tmp.unlink(missing_ok=True)
            raise
    tmp.replace(path)
    return {"path": path, "max_abs_diff": diff}


@contextmanager
def _quiet_output() -> Iterator[None]:
    """Silence file descriptors 1 and 2: on an unsupported operator the exporter's C++ side prints
    the whole partial graph (hundreds of lines) before raising; the error itself is kept."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with tempfile.TemporaryFile() as sink:
        try:
            os.dup2(sink.fileno(), 1)
            os.dup2(sink.fileno(), 2)
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)


def _add_metadata(path: Path, metadata: dict[str, str]) -> None:
    """Store ``metadata`` in the file (skipped without the ``onnx`` package: the graph works without it)."""
    try:
        import onnx
    except ImportError:
        return
    proto = onnx.load(str(path))
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(proto, str(path))


def check_onnx(wrapper: nn.Module, path: str | Path, batch: int = 3, tolerance: float = TOLERANCE) -> float:
    """Max abs difference between onnxruntime's and PyTorch's logits on a seeded random batch;
    ``ExportError`` when it exceeds ``tolerance`` (or onnxruntime is missing)."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise ExportError("onnxruntime is not installed: pip install onnxruntime, or export without the check") from None
    size = wrapper.model.image_size if hasattr(wrapper, "model") else 224
    images = torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = wrapper(images).float().numpy()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run([OUTPUT_NAME], {INPUT_NAME: images.numpy()})[0]
    diff = float(np.abs(got - expected).max()) if got.shape == expected.shape else float("inf")
    if not diff <= tolerance:
        raise ExportError(f"the ONNX model's logits differ from PyTorch's by {diff:.3g} (more than {tolerance:g}); "
                          "not written")
    return diff
