"""Batch prediction (``mlc.predict``, ``python -m train predict``): one CSV row per image, the app's
decoding and transform, per-class thresholds from config.json, --threshold, bad files skipped."""
import csv
import json

import numpy as np
import pytest
import torch

from conftest import tiny_model
from fixtures import corrupt_file, write_image
from mlc.predict import collect_images
from train.cli import main

SIZE = 64


@pytest.fixture
def model_dir(tiny_setup, tmp_path):
    torch.manual_seed(0)
    model = tiny_model("mlgcn", tiny_setup, image_size=SIZE)
    return model.save(tmp_path / "model")


@pytest.fixture
def photos(tmp_path):
    folder = tmp_path / "photos"
    write_image(folder / "a.jpg", 80, seed=1, objects=[("cat", (5, 5, 40, 40))])
    write_image(folder / "b.png", (90, 60), seed=2, mode="RGBA")
    write_image(folder / "nested" / "c.JPEG", 70, seed=3)
    (folder / "notes.txt").write_text("not an image, and not picked from a folder")
    return folder


def _read(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _app_probabilities(model_dir, path):
    """What the app computes for the same file (its loader and model_input)."""
    from mlc.models import load_model
    from mlc.serving import load_image, model_input

    model = load_model(model_dir)
    with torch.no_grad():
        return model(model_input(load_image(path).image, model)).sigmoid()[0].numpy()


def test_predict_a_folder_and_a_file(model_dir, photos, tmp_path, capsys):
    extra = write_image(tmp_path / "d.jpg", 64, seed=4)
    out = tmp_path / "preds.csv"
    assert main(["predict", "--model", str(model_dir), str(photos), str(extra), "--output", str(out)]) == 0
    captured = capsys.readouterr()
    assert "4 image(s) -> " in captured.out
    assert "predict" in captured.err and "4/4" in captured.err  # the progress bar, with counts
    rows = _read(out)
    assert [r["path"] for r in rows] == [str(photos / "a.jpg"), str(photos / "b.png"),
                                          str(photos / "nested" / "c.JPEG"), str(extra)]
    classes = json.loads((model_dir / "config.json").read_text())["classes"]
    assert list(rows[0]) == ["path", "labels", *[f"p_{c}" for c in classes]]
    for row in rows:
        probs = np.array([float(row[f"p_{c}"]) for c in classes])
        np.testing.assert_allclose(probs, _app_probabilities(model_dir, row["path"]), atol=2e-6)
        assert (row["labels"].split("|") if row["labels"] else []) == [c for c, p in zip(classes, probs) if p >= 0.5]
    assert "labels: 0.5 for every class" in captured.err


def test_thresholds_from_the_config_and_the_override(model_dir, photos, tmp_path, capsys):
    config = json.loads((model_dir / "config.json").read_text())
    classes = config["classes"]
    config["thresholds"] = [0.0] + [1.0] * (len(classes) - 1)  # only the first class, always
    (model_dir / "config.json").write_text(json.dumps(config))
    out = tmp_path / "preds.csv"
    assert main(["predict", "--model", str(model_dir), str(photos), "--output", str(out)]) == 0
    assert "per-class thresholds from the model's config" in capsys.readouterr().err
    assert {r["labels"] for r in _read(out)} == {classes[0]}
    assert main(["predict", "--model", str(model_dir), str(photos), "--output", str(out), "--threshold", "0"]) == 0
    assert {r["labels"] for r in _read(out)} == {"|".join(classes)}


def test_bad_thresholds_in_the_config_get_one_line(model_dir, photos, tmp_path, capsys):
    config = json.loads((model_dir / "config.json").read_text())
    config["thresholds"] = [0.5, 2.0]
    (model_dir / "config.json").write_text(json.dumps(config))
    assert main(["predict", "--model", str(model_dir), str(photos), "--output", str(tmp_path / "p.csv")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "'thresholds' must hold 5 probabilities" in err


def test_undecodable_files_are_skipped_with_a_warning_and_a_count(model_dir, photos, tmp_path, capsys):
    broken = corrupt_file(write_image(photos / "broken.jpg", 64, seed=9), "garbage")
    text = photos / "notes.txt"
    out = tmp_path / "preds.csv"
    assert main(["predict", "--model", str(model_dir), str(photos), str(text), "--output", str(out)]) == 0
    captured = capsys.readouterr()
    assert f"warning: skipped {broken}: " in captured.err and f"warning: skipped {text}: " in captured.err
    assert "skipped 2 file(s) that are not decodable images" in captured.out
    assert len(_read(out)) == 3


def test_bad_paths_get_one_line_naming_them(model_dir, photos, tmp_path, capsys):
    missing = tmp_path / "nowhere.jpg"
    assert main(["predict", "--model", str(model_dir), str(photos), str(missing), "--output", str(tmp_path / "p.csv")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: {missing}: no such file or folder"
    only_text = tmp_path / "x.txt"
    only_text.write_text("hello")
    assert main(["predict", "--model", str(model_dir), str(only_text), "--output", str(tmp_path / "p.csv")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == "error: none of the 1 file(s) could be decoded as an image; nothing written"
    assert not (tmp_path / "p.csv").exists()
    assert main(["predict", "--model", str(model_dir), str(photos), "--threshold", "1.5"]) == 2
    assert capsys.readouterr().err.strip() == "error: --threshold 1.5 must be a probability in [0, 1]"


def test_collect_images_orders_and_deduplicates(photos):
    files = collect_images([photos, photos / "a.jpg"])
    assert [p.name for p in files] == ["a.jpg", "b.png", "c.JPEG"]
