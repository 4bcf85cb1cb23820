"""Batch prediction over image files and folders (as timm's inference script), for ``python -m train predict``.

Images are decoded with the app's safe loader (``mlc.serving.images.load_image``: size limits from
the header, EXIF rotation, any mode to RGB, shrunk to 1,024 px) and fed through the model's
evaluation transform, so a file gets the same probabilities here as in the app. A file that cannot
be decoded is skipped with a warning naming it (the run goes on; the count is reported), while a
path that does not exist stops the run before any work: that is a typo, not a bad image.

Labels use per-class thresholds (``score >= t``) when the model's config.json has them (``thresholds``,
a list with one probability per class, or ``calibration.thresholds``), else 0.5; a given
``threshold`` overrides both.
"""
from __future__ import annotations

import csv
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mlc.models import MultiLabelModel

__all__ = ["IMAGE_SUFFIXES", "PredictError", "Prediction", "collect_images", "model_thresholds",
           "predict_files", "write_predictions"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
DEFAULT_THRESHOLD = 0.5
LABEL_SEPARATOR = "|"  # as in the CSV dataset format, so a predictions file reads back as one


class PredictError(ValueError):
    """Input that prediction cannot use (a missing path, bad thresholds); the message names it."""


@dataclass
class Prediction:
    path: Path
    probabilities: np.ndarray  # (C,)
    labels: list[str]


@dataclass
class PredictResult:
    rows: list[Prediction] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)  # (file, why)


def collect_images(inputs: Sequence[str | Path]) -> list[Path]:
    """The image files to predict: files as given (any suffix), folders searched recursively for
    image suffixes (sorted, so the output order is stable). A missing path is a ``PredictError``."""
    files: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise PredictError(f"{path}: the folder holds no image files ({', '.join(IMAGE_SUFFIXES)})")
            files += found
        elif path.is_file():
            files.append(path)
        else:
            raise PredictError(f"{path}: no such file or folder")
    seen: set[Path] = set()
    return [p for p in files if not (p.resolve() in seen or seen.add(p.resolve()))]


def _read_config(source: str | Path) -> dict[str, Any]:
    """config.json of a local model folder, or of a Hub repo from the local cache; {} when unreadable."""
    folder = Path(source)
    try:
        if folder.is_dir():
            return json.loads((folder / "config.json").read_text())
        from mlc.models.base import looks_like_repo_id

        if looks_like_repo_id(str(source)):
            from huggingface_hub import hf_hub_download

            parts = str(source).strip("/").split("/")
            path = hf_hub_download("/".join(parts[:2]), "config.json", subfolder="/".join(parts[2:]) or None,
                                   local_files_only=True)
            return json.loads(Path(path).read_text())
    except Exception:  # noqa: BLE001  (the model loaded already; its thresholds are optional)
        return {}
    return {}


def model_thresholds(model: MultiLabelModel, source: str | Path | None = None) -> tuple[np.ndarray, str]:
    """Per-class thresholds of a model and where they come from: the model's own ``thresholds``
    (attribute, or config.json key ``thresholds`` / ``calibration.thresholds``), else 0.5 for all."""
    found: Any = getattr(model, "thresholds", None)
    if found is None and getattr(model, "calibration", None) is not None:
        found = getattr(model.calibration, "thresholds", None)
    if found is None and source is not None:
        config = _read_config(source)
        found = config.get("thresholds")
        if found is None and isinstance(config.get("calibration"), dict):
            found = config["calibration"].get("thresholds")
    n = model.num_classes
    if found is None:
        return np.full(n, DEFAULT_THRESHOLD), f"{DEFAULT_THRESHOLD:g} for every class (the model has no per-class thresholds)"
    try:
        values = np.asarray(found, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise PredictError("the model's config.json 'thresholds' must be a list of numbers") from None
    if len(values) != n or not np.all((values >= 0) & (values <= 1)):
        raise PredictError(f"the model's config.json 'thresholds' must hold {n} probabilities in [0, 1] "
                           f"(one per class), got {len(values)} values")
    return values, "per-class thresholds from the model's config"


def _decode(path: Path, transform: Callable) -> tuple[torch.Tensor | None, str | None]:
    from mlc.serving.errors import RequestError
    from mlc.serving.images import load_image

    try:
        return transform(load_image(path).image), None
    except RequestError as err:
        return None, str(err)
    except Exception as err:  # noqa: BLE001  (a file we could not read for any other reason)
        return None, f"{type(err).__name__}: {err}"


class _Files(torch.utils.data.Dataset):
    def __init__(self, paths: Sequence[Path], transform: Callable):
        self.paths, self.transform = list(paths), transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor | None, str | None]:
        return (index, *_decode(self.paths[index], self.transform))


def _keep(batch: list) -> list:
    return batch  # decoded tensors and failures travel as they are; stacked in the main process


def predict_files(model: MultiLabelModel, paths: Sequence[Path], thresholds: np.ndarray, *, device: str | torch.device = "cpu",
                  batch_size: int = 32, num_workers: int = 0, progress: bool = True,
                  warn: Callable[[str], None] | None = None) -> PredictResult:
    """Probabilities and labels of each file; undecodable files are skipped (``warn`` is told each)."""
    from tqdm import tqdm

    from mlc.data.transforms import build_transforms

    norm = model.normalization
    transform = build_transforms(model.image_size, train=False, mean=norm.mean, std=norm.std)
    loader = torch.utils.data.DataLoader(_Files(paths, transform), batch_size=batch_size, num_workers=num_workers,
                                         collate_fn=_keep)
    model = model.to(device).eval()
    result = PredictResult()
    bar = tqdm(total=len(paths), desc="predict", unit="img", disable=not progress)
    with torch.inference_mode():
        for batch in loader:
            good = [(i, x) for i, x, _ in batch if x is not None]
            for i, _, why in batch:
                if why is not None:
                    result.skipped.append((paths[i], why))
                    message = f"warning: skipped {paths[i]}: {why}"
                    warn(message) if warn else bar.write(message, file=sys.stderr)
            if good:
                probs = model(torch.stack([x for _, x in good]).to(device)).float().sigmoid().cpu().numpy()
                for (i, _), p in zip(good, probs):
                    labels = [c for c, score, t in zip(model.classes, p, thresholds) if score >= t]
                    result.rows.append(Prediction(paths[i], p, labels))
            bar.update(len(batch))
            bar.set_postfix(skipped=len(result.skipped))
    bar.close()
    return result


def write_predictions(rows: Sequence[Prediction], classes: Sequence[str], output: str | Path) -> Path:
    """CSV: ``path``, ``labels`` (``|``-separated, so the file reads back as a CSV dataset), then one
    probability column per class, named ``p_<class>``."""
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".{output.name}.partial")
    with tmp.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "labels", *[f"p_{c}" for c in classes]])
        for row in rows:
            writer.writerow([str(row.path), LABEL_SEPARATOR.join(row.labels), *[f"{p:.6f}" for p in row.probabilities]])
    tmp.replace(output)
    return output
