"""scripts/calibrate_checkpoints.py on a generated VOC tree: the calibration comes from the seeded
selection split, the weights file is untouched, eval.json gains the decision metrics; a checkpoint
whose label statistics do not match the recomputed split is refused."""
import hashlib
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from fixtures import make_voc
from mlc.calibration import calibrate
from mlc.data import build_transforms
from mlc.metrics import evaluate
from mlc.models import create_model, load_model
from mlc.stats import label_statistics
from train.data import build_splits

ROOT = Path(__file__).resolve().parents[1]
TRAIN_CONFIG = {"dataset": "voc2007", "data_root": None, "train_split": "train", "eval_split": "val",
                "selection_fraction": 0.25, "seed": 0, "difficult_as_positive": True}


def _script():
    spec = importlib.util.spec_from_file_location("calibrate_checkpoints", ROOT / "scripts" / "calibrate_checkpoints.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@torch.no_grad()
def _logits(model, dataset) -> np.ndarray:
    norm = model.normalization
    transform = build_transforms(model.image_size, train=False, mean=norm.mean, std=norm.std)
    return torch.cat([model(x[None]) for x, _ in dataset.with_transform(transform)]).numpy()


@pytest.fixture
def checkpoint(tmp_path):
    root = make_voc(tmp_path / "voc", n_train=24, n_val=8, image_size=64)
    splits, info = build_splits("voc2007", str(root), "train", "val", 0.25, 0)
    torch.manual_seed(0)
    model = create_model("baseline", classes=splits.fit.classes, backbone="tiny", pretrained=False, image_size=64,
                         label_stats=label_statistics(splits.fit.labels, splits.fit.classes)).eval()
    folder = model.save(tmp_path / "checkpoints" / "baseline")
    model = load_model(folder)
    probs = 1 / (1 + np.exp(-_logits(model, splits.evaluation).astype(np.float64)))
    metrics = evaluate(probs, splits.evaluation.labels, classes=model.classes).to_dict()
    (folder / "eval.json").write_text(json.dumps({"model_name": "baseline", "dataset": "voc2007", "split": "val",
                                                  "split_info": info.summary(), "metrics": metrics}))
    (folder / "training_config.yaml").write_text(yaml.safe_dump({**TRAIN_CONFIG, "data_root": str(root)}))
    return folder, root, splits, model


def test_calibrates_on_the_selection_split_without_touching_the_weights(checkpoint, tmp_path):
    folder, root, splits, model = checkpoint
    weights = folder / "model.safetensors"
    before = hashlib.md5(weights.read_bytes()).hexdigest()
    report = tmp_path / "report.json"
    assert _script().main([str(folder.parent), "--num-workers", "0", "--report", str(report)]) == 0
    assert hashlib.md5(weights.read_bytes()).hexdigest() == before
    cal = load_model(folder).calibration
    sel = _logits(model, splits.selection).astype(np.float64)
    expected = calibrate(1 / (1 + np.exp(-sel)), sel, splits.selection.labels, model.classes)
    assert cal.selection_size == len(splits.selection) == 6
    assert cal.thresholds == pytest.approx(expected.thresholds)
    assert cal.ood_threshold == pytest.approx(expected.ood_threshold, abs=1e-5)
    assert "recomputed with train.data.build_splits" in cal.extra["selection_split"]
    result = json.loads((folder / "eval.json").read_text())
    assert set(result["decision_metrics"]) == {"0.5", "tuned"} and result["ood"]["num_images"] == 8
    assert result["decision_metrics"]["0.5"]["cf1"] == pytest.approx(result["metrics"]["cf1"])
    figures = json.loads(report.read_text())
    assert figures["notice_textures"]["images"] == 5 and figures["notice_eval"]["images"] == 8


def test_a_checkpoint_from_another_split_is_refused(checkpoint):
    folder, *_ = checkpoint
    config = json.loads((folder / "config.json").read_text())
    config["label_stats"]["counts"][0] += 1  # not the label counts of the recomputed fit split
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="label counts differ"):
        _script().main([str(folder.parent), "--num-workers", "0"])
    assert load_model(folder).calibration is None
