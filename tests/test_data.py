"""Readers (VOC, COCO, CSV), the dataset base, the factory and the summary script, on fixtures."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mlc.data import (
    VOC_CLASSES,
    COCODataset,
    CSVDataset,
    DatasetError,
    MultiLabelDataset,
    VOCDataset,
    build_dataset,
)
from mlc.data.factory import coco_paths
from mlc.data.summary import main as summary_main
from fixtures import VOCObject, corrupt_file, make_coco, make_csv, make_voc, write_image

REPO = Path(__file__).resolve().parents[1]


def voc_row(**labels: int) -> list[int]:
    row = [0] * len(VOC_CLASSES)
    for name, value in labels.items():
        row[VOC_CLASSES.index(name)] = value
    return row


# --------------------------------------------------------------------------------------------- VOC

VOC_SPEC = {
    "train": {
        "000001": ["cat", "dog"],
        "000002": [VOCObject("person", difficult=True)],  # difficult only -> -1
        "000003": [],  # no objects -> all 0
        "000004": [VOCObject("cat", difficult=True), "cat"],  # a normal object wins -> 1
        "000005": [VOCObject("bird", difficult=True), "bus", "bus"],
    },
    "val": {"000006": ["tvmonitor"], "000007": ["aeroplane", VOCObject("sheep", difficult=True)]},
}


def test_voc_labels_exact(tmp_path: Path) -> None:
    root = make_voc(tmp_path, annotations=VOC_SPEC)
    train = VOCDataset(root, "train")
    assert train.classes == VOC_CLASSES
    assert VOC_CLASSES[:3] == ["aeroplane", "bicycle", "bird"] and VOC_CLASSES[-1] == "tvmonitor"
    assert len(VOC_CLASSES) == 20
    assert train.ids == ["000001", "000002", "000003", "000004", "000005"]
    assert [p.name for p in train.image_paths] == [f"{i}.jpg" for i in train.ids]
    assert train.labels.dtype == np.int8
    expected = [
        voc_row(cat=1, dog=1),
        voc_row(person=-1),
        voc_row(),
        voc_row(cat=1),
        voc_row(bird=-1, bus=1),
    ]
    np.testing.assert_array_equal(train.labels, np.array(expected, dtype=np.int8))

    val = VOCDataset(root, "val")
    np.testing.assert_array_equal(val.labels, [voc_row(tvmonitor=1), voc_row(aeroplane=1, sheep=-1)])
    trainval = VOCDataset(root, "trainval")
    np.testing.assert_array_equal(trainval.labels, np.concatenate([train.labels, val.labels]))

    image, target = train[1]
    assert isinstance(image, Image.Image) and image.mode == "RGB"
    assert target.dtype == torch.float32
    assert target.tolist() == [float(v) for v in expected[1]]


def test_voc_default_fixture_has_difficult_and_empty_images(tmp_path: Path) -> None:
    root = make_voc(tmp_path, n_train=12, n_val=6, image_size=48)
    train, val = VOCDataset(root, "train"), VOCDataset(root, "val")
    assert (len(train), len(val)) == (12, 6)
    for ds in (train, val):
        assert (ds.labels == -1).any()
        assert (~ds.labels.any(axis=1)).sum() >= 1
    # every one of the fixture's five classes is positive somewhere in train
    assert (train.labels[:, :5] == 1).any(axis=0).all()
    assert not train.labels[:, 5:].any()
    assert train.load_image(0).size == (48, 48) and train.load_image(1).size == (48, 36)


@pytest.mark.parametrize("layout", ["plain", "devkit"])
def test_voc_root_layouts(tmp_path: Path, layout: str) -> None:
    root = make_voc(tmp_path, n_train=4, n_val=3, layout=layout)
    voc_dir = root / ("VOCdevkit" if layout == "devkit" else "") / "VOC2007"
    a = VOCDataset(root, "train")
    b = VOCDataset(voc_dir, "train")  # the VOC2007 folder itself
    c = build_dataset("voc2007", root, "train")
    assert a.ids == b.ids == c.ids
    np.testing.assert_array_equal(a.labels, c.labels)
    if layout == "devkit":
        assert len(VOCDataset(root / "VOCdevkit", "val")) == 3


def test_voc2012_via_factory(tmp_path: Path) -> None:
    root = make_voc(tmp_path, n_train=3, n_val=3, year="2012")
    assert len(build_dataset("voc2012", root, "val")) == 3
    with pytest.raises(DatasetError, match="VOC2007"):
        build_dataset("voc2007", root, "val")


def test_voc_corrupt_image_fails_on_load_naming_file(tmp_path: Path) -> None:
    root = make_voc(tmp_path, n_train=4, n_val=3)
    ds = VOCDataset(root, "train")
    corrupt_file(ds.image_paths[2], "truncate")
    corrupt_file(ds.image_paths[3], "garbage")
    ds[0]  # the others still load
    for i in (2, 3):
        with pytest.raises(DatasetError, match=ds.image_paths[i].name):
            ds[i]
        with pytest.raises(DatasetError, match=ds.image_paths[i].name):
            ds.load_image(i)


def test_voc_image_deleted_after_construction(tmp_path: Path) -> None:
    ds = VOCDataset(make_voc(tmp_path, n_train=3, n_val=3), "train")
    ds.image_paths[0].unlink()
    with pytest.raises(DatasetError, match="000001.jpg.*not found"):
        ds.load_image(0)


def test_voc_malformed_xml(tmp_path: Path) -> None:
    root = make_voc(tmp_path, n_train=4, n_val=3)
    xml = root / "VOC2007" / "Annotations" / "000003.xml"
    xml.write_text(xml.read_text()[:-40])
    with pytest.raises(DatasetError, match=r"000003\.xml.*malformed XML"):
        VOCDataset(root, "train")
    assert len(VOCDataset(root, "val")) == 3  # other splits unaffected


def test_voc_unknown_class(tmp_path: Path) -> None:
    root = make_voc(tmp_path, annotations={"train": {"000001": ["cat"], "000002": ["unicorn"]}})
    with pytest.raises(DatasetError, match=r"000002\.xml.*unicorn"):
        VOCDataset(root, "train")


def test_voc_missing_image(tmp_path: Path) -> None:
    root = make_voc(tmp_path, n_train=4, n_val=3)
    (root / "VOC2007" / "JPEGImages" / "000002.jpg").unlink()
    with pytest.raises(DatasetError, match=r"000002\.jpg.*not found"):
        VOCDataset(root, "train")


def test_voc_missing_xml(tmp_path: Path) -> None:
    root = make_voc(tmp_path, n_train=4, n_val=3)
    (root / "VOC2007" / "Annotations" / "000004.xml").unlink()
    with pytest.raises(DatasetError, match=r"000004\.xml.*not found"):
        VOCDataset(root, "train")


def test_voc_empty_and_missing_split(tmp_path: Path) -> None:
    root = make_voc(tmp_path, n_train=3, n_val=3)
    (root / "VOC2007" / "ImageSets" / "Main" / "val.txt").write_text("\n  \n")
    with pytest.raises(DatasetError, match=r"val\.txt.*empty"):
        VOCDataset(root, "val")
    with pytest.raises(DatasetError, match=r"test\.txt.*not found"):
        VOCDataset(root, "test")


def test_voc_no_tree(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="no VOC2007 tree"):
        VOCDataset(tmp_path, "train")


# -------------------------------------------------------------------------------------------- base


def test_dataset_error_is_value_error() -> None:
    assert issubclass(DatasetError, ValueError)


def test_subset_with_transform_and_pickle(tmp_path: Path) -> None:
    ds = VOCDataset(make_voc(tmp_path, annotations=VOC_SPEC), "train")
    sub = ds.subset([4, 0])
    assert isinstance(sub, VOCDataset) and sub.classes == ds.classes
    assert sub.ids == ["000005", "000001"]
    np.testing.assert_array_equal(sub.labels, ds.labels[[4, 0]])
    mask = ds.subset(ds.labels[:, VOC_CLASSES.index("cat")] == 1)
    assert mask.ids == ["000001", "000004"]
    assert len(ds) == 5  # the original is untouched

    size = ds.with_transform(lambda im: im.size)
    assert size[0][0] == (64, 64) and ds.transform is None

    clone = pickle.loads(pickle.dumps(sub))
    assert clone.ids == sub.ids and clone.image_paths == sub.image_paths
    np.testing.assert_array_equal(clone.labels, sub.labels)


def test_base_dataset_direct_and_validation(tmp_path: Path) -> None:
    paths = [write_image(tmp_path / f"{k}.png", 16, seed=k) for k in range(3)]
    ds = MultiLabelDataset(["a", "b"], paths, np.array([[1, 0], [0, -1], [0, 0]]))
    assert ds.ids == ["0", "1", "2"] and ds.labels.dtype == np.int8 and ds.num_classes == 2
    assert ds[1][1].tolist() == [0.0, -1.0]
    with pytest.raises(DatasetError, match="shape"):
        MultiLabelDataset(["a", "b"], paths, np.zeros((3, 3)))
    with pytest.raises(DatasetError, match="only contain"):
        MultiLabelDataset(["a", "b"], paths, np.full((3, 2), 2))


# -------------------------------------------------------------------------------------------- COCO


def test_coco_category_id_order_and_unannotated(tmp_path: Path) -> None:
    # written out of id order (7, 1, 3); labels per image as category ids
    root = make_coco(tmp_path, labels=[[7], [1, 3], [], [3, 3], [7, 1]])
    ann, images = coco_paths(root, "train", "2017")
    ds = COCODataset(ann, images)
    assert ds.classes == ["person", "car", "dog"]
    assert ds.category_ids == [1, 3, 7]
    assert ds.ids == ["100", "102", "104", "106", "108"]
    np.testing.assert_array_equal(
        ds.labels, np.array([[0, 0, 1], [1, 1, 0], [0, 0, 0], [0, 1, 0], [1, 0, 1]], dtype=np.int8)
    )
    dropped = COCODataset(ann, images, keep_unannotated=False)
    assert dropped.ids == ["100", "102", "106", "108"]
    np.testing.assert_array_equal(dropped.labels, ds.labels[[0, 1, 3, 4]])
    assert ds[2][1].tolist() == [0.0, 0.0, 0.0]


def test_coco_factory(tmp_path: Path) -> None:
    make_coco(tmp_path, n_images=6, n_unannotated=2, split="val", year="2014")
    ds = build_dataset("coco2014", tmp_path, "val")
    assert len(ds) == 6 and (~ds.labels.any(axis=1)).sum() == 2
    assert len(build_dataset("coco2014", tmp_path, "val", keep_unannotated=False)) == 4


def _rewrite_json(path: Path, edit) -> None:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def test_coco_errors(tmp_path: Path) -> None:
    root = make_coco(tmp_path, n_images=4)
    ann, images = coco_paths(root, "train", "2017")
    original = ann.read_text()

    ann.write_text(original[:-10])
    with pytest.raises(DatasetError, match=rf"{ann.name}.*malformed JSON"):
        COCODataset(ann, images)

    ann.write_text(original)
    _rewrite_json(ann, lambda d: d["annotations"][0].update(category_id=42))
    with pytest.raises(DatasetError, match=rf"{ann.name}.*unknown category id 42"):
        COCODataset(ann, images)

    ann.write_text(original)
    _rewrite_json(ann, lambda d: d["annotations"][0].update(image_id=999))
    with pytest.raises(DatasetError, match=rf"{ann.name}.*unknown image id 999"):
        COCODataset(ann, images)

    ann.write_text(original)
    _rewrite_json(ann, lambda d: d.pop("categories"))
    with pytest.raises(DatasetError, match="not a COCO instances file"):
        COCODataset(ann, images)

    ann.write_text(original)
    (images / "000000000102.jpg").unlink()
    with pytest.raises(DatasetError, match=r"000000000102\.jpg.*not found"):
        COCODataset(ann, images)

    with pytest.raises(DatasetError, match=r"instances_val2017\.json.*not found"):
        build_dataset("coco2017", root, "val")


# --------------------------------------------------------------------------------------------- CSV


def test_csv_inferred_classes_and_empty_labels(tmp_path: Path) -> None:
    csv_file = make_csv(tmp_path, labels=[["dog", "cat"], [], ["tree"], ["cat"]])
    ds = CSVDataset(csv_file)
    assert ds.classes == ["cat", "dog", "tree"]  # sorted unique
    np.testing.assert_array_equal(ds.labels, [[1, 1, 0], [0, 0, 0], [0, 0, 1], [1, 0, 0]])
    assert ds.ids[0] == "images/train_000.jpg"
    assert ds.image_paths[0] == tmp_path / "images" / "train_000.jpg"
    assert ds[1][1].tolist() == [0.0, 0.0, 0.0]


def test_csv_given_classes_and_unknown_label(tmp_path: Path) -> None:
    csv_file = make_csv(tmp_path, labels=[["dog"], ["bird", "dog"], []])
    ds = CSVDataset(csv_file, classes=["dog", "bird", "fish"])
    assert ds.classes == ["dog", "bird", "fish"]
    np.testing.assert_array_equal(ds.labels, [[1, 0, 0], [1, 1, 0], [0, 0, 0]])
    with pytest.raises(DatasetError, match=r"train\.csv, line 3: unknown label 'bird'"):
        CSVDataset(csv_file, classes=["dog", "cat"])


def test_csv_image_root_absolute_paths_and_factory(tmp_path: Path) -> None:
    make_csv(tmp_path / "data", n_images=3, split="val")
    elsewhere = tmp_path / "lists" / "val.csv"
    elsewhere.parent.mkdir()
    elsewhere.write_text((tmp_path / "data" / "val.csv").read_text())
    with pytest.raises(DatasetError, match=r"line 2: image file not found"):
        CSVDataset(elsewhere)  # relative to the CSV's own folder by default
    assert len(CSVDataset(elsewhere, image_root=tmp_path / "data")) == 3

    absolute = tmp_path / "abs.csv"
    img = (tmp_path / "data" / "images" / "val_000.jpg").resolve()
    absolute.write_text(f"path,labels\n{img},a | b\n")
    ds = CSVDataset(absolute, image_root=tmp_path / "nowhere")
    assert ds.image_paths == [img] and ds.classes == ["a", "b"]

    assert len(build_dataset("csv", tmp_path / "data", "val")) == 3
    assert len(build_dataset("csv", tmp_path / "data" / "val.csv", "ignored")) == 3


def test_csv_errors(tmp_path: Path) -> None:
    bad_header = tmp_path / "h.csv"
    bad_header.write_text("image,tags\nx.jpg,a\n")
    with pytest.raises(DatasetError, match=r"h\.csv.*'path' and 'labels'"):
        CSVDataset(bad_header)
    no_rows = tmp_path / "e.csv"
    no_rows.write_text("path,labels\n")
    with pytest.raises(DatasetError, match=r"e\.csv.*no data rows"):
        CSVDataset(no_rows)
    with pytest.raises(DatasetError, match=r"missing\.csv.*not found"):
        CSVDataset(tmp_path / "missing.csv")
    with pytest.raises(DatasetError, match="unknown dataset kind 'imagenet'"):
        build_dataset("imagenet", tmp_path, "train")


# ----------------------------------------------------------------------------------------- summary


def test_summary_counts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = make_voc(tmp_path, annotations=VOC_SPEC)
    assert summary_main([str(root), "--splits", "train", "val"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0] == "| class | train | val | train (difficult only) | val (difficult only) |"
    assert "| cat | 2 | 0 | 0 | 0 |" in lines
    assert "| person | 0 | 0 | 1 | 0 |" in lines
    assert "| sheep | 0 | 0 | 0 | 1 |" in lines
    assert "| bus | 1 | 0 | 0 | 0 |" in lines
    assert "| **images** | 5 | 2 |  |  |" in lines
    assert "| **images without any label** | 1 | 0 |  |  |" in lines
    assert "| **positive labels** | 4 | 2 | 2 | 1 |" in lines


def test_summary_cli_subprocess(tmp_path: Path) -> None:
    csv_file = make_csv(tmp_path, labels=[["dog"], ["dog", "cat"], []])
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "mlc.data.summary", str(csv_file), "--kind", "csv", "--splits", "train"]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "| dog | 2 |" in done.stdout and "| **images without any label** | 1 |" in done.stdout
    assert "difficult" not in done.stdout


def test_summary_reports_dataset_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert summary_main([str(tmp_path / "nothing")]) == 2
    assert "nothing: no such file or folder" in capsys.readouterr().err
    assert summary_main([str(tmp_path), "--kind", "voc2007"]) == 2  # the reader's own error when the kind is given
    assert "no VOC2007 tree" in capsys.readouterr().err
