"""Writers for tiny on-disk datasets (VOC tree, COCO instances JSON, CSV) used across the tests.

Images are real JPEGs: low-amplitude noise with one filled rectangle per object in a colour fixed
by the class name, so a model trained on a fixture has something learnable. Every writer is
deterministic for a given `seed`, and each accepts an explicit per-image label spec so a test can
assert the exact label matrix it wrote.

    root = make_voc(tmp_path)                      # VOCDataset(root, "train") / build_dataset("voc2007", root, "train")
    root = make_coco(tmp_path)                     # build_dataset("coco2017", root, "train")
    csv = make_csv(tmp_path)                       # CSVDataset(csv) / build_dataset("csv", csv, "train")
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from mlc.data import VOC_CLASSES

__all__ = [
    "COCO_CATEGORIES",
    "CSV_CLASSES",
    "VOC_CLASSES",
    "VOCObject",
    "class_color",
    "corrupt_file",
    "default_voc_annotations",
    "make_coco",
    "make_csv",
    "make_voc",
    "synthetic_textures",
    "write_image",
    "write_voc_xml",
]

Box = tuple[int, int, int, int]  # xmin, ymin, xmax, ymax (VOC: 1-based, inclusive)

# (id, name), deliberately non-contiguous and out of id order.
COCO_CATEGORIES: tuple[tuple[int, str], ...] = ((7, "dog"), (1, "person"), (3, "car"))
CSV_CLASSES: tuple[str, ...] = ("cat", "dog", "bird", "tree")


@dataclass(frozen=True)
class VOCObject:
    """One `<object>` of a VOC annotation; `box=None` places it at random."""

    name: str
    difficult: bool = False
    box: Box | None = None


def class_color(name: str) -> tuple[int, int, int]:
    """A saturated colour fixed by the class name (stable across runs, unlike `hash`)."""
    h = zlib.crc32(name.encode())
    return (64 + h % 192, 64 + (h >> 8) % 192, 64 + (h >> 16) % 192)


def _size(image_size: int | tuple[int, int]) -> tuple[int, int]:
    return (image_size, image_size) if isinstance(image_size, int) else image_size


def _random_box(rng: np.random.Generator, width: int, height: int) -> Box:
    w = int(rng.integers(width // 4, width // 2 + 1))
    h = int(rng.integers(height // 4, height // 2 + 1))
    x = int(rng.integers(1, width - w + 1))
    y = int(rng.integers(1, height - h + 1))
    return (x, y, x + w - 1, y + h - 1)


def write_image(
    path: str | Path,
    image_size: int | tuple[int, int] = 64,
    seed: int = 0,
    mode: str = "RGB",
    objects: Sequence[tuple[str, Box]] = (),
) -> Path:
    """Write an image (format from the suffix) of `mode`; `objects` are (class, box) rectangles.

    `mode` may be any PIL mode the format can store, e.g. "L", "RGBA", "P", "I;16" (use .png).
    For "I;16" the content spans the full 16-bit range, so a reader that clips instead of
    rescaling produces a nearly white image.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    width, height = _size(image_size)
    rng = np.random.default_rng(seed)
    pixels = rng.integers(90, 166, size=(height, width, 3), dtype=np.uint8)
    for name, (x0, y0, x1, y1) in objects:
        pixels[max(y0 - 1, 0) : y1, max(x0 - 1, 0) : x1] = class_color(name)
    image = Image.fromarray(pixels)
    if mode == "I;16":
        gray = np.asarray(image.convert("L"), dtype=np.uint16) * 257
        image = Image.fromarray(gray)
    elif mode != "RGB":
        image = image.convert(mode)
    image.save(path)
    return path


def corrupt_file(path: str | Path, how: str = "truncate") -> Path:
    """Break a file: "truncate" keeps the first third (header still parses), "garbage" replaces it."""
    path = Path(path)
    data = path.read_bytes()
    if how == "truncate":
        path.write_bytes(data[: max(len(data) // 3, 1)])
    elif how == "garbage":
        path.write_bytes(b"this is not an image or annotation" * 4)
    else:
        raise ValueError(f"unknown corruption {how!r}")
    return path


def write_voc_xml(
    path: str | Path,
    image_id: str,
    objects: Sequence[VOCObject],
    image_size: tuple[int, int],
    year: str = "2007",
) -> Path:
    """A VOC annotation XML; every object must carry a box."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    root = ET.Element("annotation")
    ET.SubElement(root, "folder").text = f"VOC{year}"
    ET.SubElement(root, "filename").text = f"{image_id}.jpg"
    size = ET.SubElement(root, "size")
    for tag, value in zip(("width", "height", "depth"), (*image_size, 3)):
        ET.SubElement(size, tag).text = str(value)
    ET.SubElement(root, "segmented").text = "0"
    for obj in objects:
        if obj.box is None:
            raise ValueError(f"object {obj.name!r} of {image_id} has no box")
        node = ET.SubElement(root, "object")
        ET.SubElement(node, "name").text = obj.name
        ET.SubElement(node, "pose").text = "Unspecified"
        ET.SubElement(node, "truncated").text = "0"
        ET.SubElement(node, "difficult").text = "1" if obj.difficult else "0"
        box = ET.SubElement(node, "bndbox")
        for tag, value in zip(("xmin", "ymin", "xmax", "ymax"), obj.box):
            ET.SubElement(box, tag).text = str(value)
    ET.indent(root)
    ET.ElementTree(root).write(path, encoding="utf-8", xml_declaration=False)
    return path


def default_voc_annotations(
    n_train: int = 12,
    n_val: int = 6,
    classes: Sequence[str] = VOC_CLASSES[:5],
    seed: int = 0,
) -> dict[str, dict[str, list[VOCObject]]]:
    """split -> image id -> objects. Per split (given >= 3 images): image 1 has only a difficult
    object (label -1), the last image has no objects (all 0), the others cycle through `classes`
    (every class positive in train when n_train allows) with a random second object."""
    rng = np.random.default_rng(seed)
    out: dict[str, dict[str, list[VOCObject]]] = {}
    next_id = 1
    for split, n in (("train", n_train), ("val", n_val)):
        images: dict[str, list[VOCObject]] = {}
        for k in range(n):
            image_id = f"{next_id:06d}"
            next_id += 1
            if k == 1 and n >= 3:
                objects = [VOCObject(classes[(k + 1) % len(classes)], difficult=True)]
            elif k == n - 1 and n >= 3:
                objects = []
            else:
                objects = [VOCObject(classes[k % len(classes)])]
                if len(classes) > 1 and rng.random() < 0.5:
                    other = classes[int(rng.integers(len(classes)))]
                    objects.append(VOCObject(other, difficult=bool(rng.random() < 0.2)))
            images[image_id] = objects
        out[split] = images
    return out


def make_voc(
    root: str | Path,
    n_train: int = 12,
    n_val: int = 6,
    image_size: int = 64,
    classes: Sequence[str] = VOC_CLASSES[:5],
    *,
    annotations: Mapping[str, Mapping[str, Sequence[VOCObject | str]]] | None = None,
    year: str = "2007",
    layout: str = "plain",
    seed: int = 0,
) -> Path:
    """Write a VOC tree and return `root` (what `VOCDataset` / `build_dataset` take).

    layout "plain": root/VOC<year>/...; "devkit": root/VOCdevkit/VOC<year>/... .
    `annotations` (split -> id -> objects, a str meaning a non-difficult object) replaces the
    generated ones (see `default_voc_annotations`); `trainval.txt` is always train + val.
    Images alternate between square and 4:3 so resizing is exercised.
    """
    root = Path(root)
    if layout not in ("plain", "devkit"):
        raise ValueError(f"unknown layout {layout!r}")
    voc = root / ("VOCdevkit" if layout == "devkit" else "") / f"VOC{year}"
    if annotations is None:
        annotations = default_voc_annotations(n_train, n_val, classes, seed)
    rng = np.random.default_rng(seed)
    main = voc / "ImageSets" / "Main"
    main.mkdir(parents=True, exist_ok=True)
    all_ids: list[str] = []
    for split, images in annotations.items():
        for image_id, spec in images.items():
            size = (image_size, image_size) if len(all_ids) % 2 == 0 else (image_size, image_size * 3 // 4)
            objects = [VOCObject(o) if isinstance(o, str) else o for o in spec]
            objects = [o if o.box else VOCObject(o.name, o.difficult, _random_box(rng, *size)) for o in objects]
            write_image(voc / "JPEGImages" / f"{image_id}.jpg", size, seed=seed * 100003 + len(all_ids),
                        objects=[(o.name, o.box) for o in objects])  # fmt: skip
            write_voc_xml(voc / "Annotations" / f"{image_id}.xml", image_id, objects, size, year)
            all_ids.append(image_id)
        (main / f"{split}.txt").write_text("".join(f"{i}\n" for i in images))
    if "trainval" not in annotations and {"train", "val"} <= set(annotations):
        trainval = [*annotations["train"], *annotations["val"]]
        (main / "trainval.txt").write_text("".join(f"{i}\n" for i in trainval))
    return root


def make_coco(
    root: str | Path,
    n_images: int = 10,
    image_size: int = 64,
    categories: Sequence[tuple[int, str]] = COCO_CATEGORIES,
    *,
    labels: Sequence[Sequence[int]] | None = None,
    n_unannotated: int = 1,
    split: str = "train",
    year: str = "2017",
    seed: int = 0,
) -> Path:
    """Write `root/annotations/instances_<split><year>.json` and `root/<split><year>/*.jpg`; return `root`.

    `labels` gives each image's category ids (one annotation each, an empty list = unannotated)
    and overrides `n_images` / `n_unannotated`; otherwise images cycle through the categories,
    with the last `n_unannotated` images left without annotations. Image ids are 100, 102, ...
    (not 0..N-1) so readers cannot confuse ids with positions; categories are written in the
    order given.
    """
    root = Path(root)
    cat_ids = [cid for cid, _ in categories]
    if labels is None:
        rng = np.random.default_rng(seed)
        labels = []
        for k in range(n_images):
            if k >= n_images - n_unannotated:
                labels.append([])
                continue
            ids = [cat_ids[k % len(cat_ids)]]
            if rng.random() < 0.5:
                ids.append(cat_ids[int(rng.integers(len(cat_ids)))])
            labels.append(ids)
    image_dir = root / f"{split}{year}"
    rng = np.random.default_rng(seed + 1)
    names = dict((cid, name) for cid, name in categories)
    images, annotations = [], []
    for k, ids in enumerate(labels):
        image_id = 100 + 2 * k
        file_name = f"{image_id:012d}.jpg"
        size = (image_size, image_size)
        boxes = [(names.get(cid, "unknown"), _random_box(rng, *size)) for cid in ids]
        write_image(image_dir / file_name, size, seed=seed * 100003 + k, objects=boxes)
        images.append({"id": image_id, "file_name": file_name, "width": size[0], "height": size[1]})
        for cid, (_, (x0, y0, x1, y1)) in zip(ids, boxes):
            annotations.append({
                "id": len(annotations) + 1, "image_id": image_id, "category_id": cid, "iscrowd": 0,
                "bbox": [x0 - 1, y0 - 1, x1 - x0 + 1, y1 - y0 + 1], "area": (x1 - x0 + 1) * (y1 - y0 + 1),
            })  # fmt: skip
    annotation_file = root / "annotations" / f"instances_{split}{year}.json"
    annotation_file.parent.mkdir(parents=True, exist_ok=True)
    annotation_file.write_text(json.dumps({
        "info": {"description": "mlc test fixture"},
        "images": images,
        "annotations": annotations,
        "categories": [{"id": cid, "name": name, "supercategory": "thing"} for cid, name in categories],
    }))  # fmt: skip
    return root


def make_csv(
    root: str | Path,
    n_images: int = 10,
    image_size: int = 64,
    classes: Sequence[str] = CSV_CLASSES,
    *,
    labels: Sequence[Sequence[str]] | None = None,
    split: str = "train",
    image_dir: str = "images",
    seed: int = 0,
) -> Path:
    """Write `root/<split>.csv` (header `path,labels`) and `root/<image_dir>/<split>_NNN.jpg`; return the CSV path.

    `labels` gives each image's label names (empty = no labels) and overrides `n_images`;
    otherwise images cycle through `classes`, with a second label at random and the last image
    unlabelled. Paths in the CSV are relative to `root`.
    """
    root = Path(root)
    if labels is None:
        rng = np.random.default_rng(seed)
        labels = []
        for k in range(n_images):
            names = [] if k == n_images - 1 else [classes[k % len(classes)]]
            if names and rng.random() < 0.5:
                other = classes[int(rng.integers(len(classes)))]
                names += [other] if other not in names else []
            labels.append(names)
    rng = np.random.default_rng(seed + 1)
    lines = ["path,labels"]
    for k, names in enumerate(labels):
        rel = f"{image_dir}/{split}_{k:03d}.jpg"
        size = (image_size, image_size)
        write_image(root / rel, size, seed=seed * 100003 + k, objects=[(n, _random_box(rng, *size)) for n in names])
        lines.append(f"{rel},{'|'.join(names)}")
    csv_file = root / f"{split}.csv"
    csv_file.write_text("\n".join(lines) + "\n")
    return csv_file


def synthetic_textures(size: int = 256, seed: int = 0) -> dict[str, np.ndarray]:
    """Non-photos no VOC class looks like (uint8 RGB, size x size), for out-of-distribution checks:
    colour noise, a checkerboard, diagonal stripes, a smooth colour gradient and blurred blobs
    ("plasma"). Deterministic for a given seed."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    noise = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    checker = ((np.floor(x * 8) + np.floor(y * 8)) % 2)[..., None] * np.array([230, 40, 40]) + 15
    stripes = (np.sin((x + y) * 40) > 0)[..., None] * np.array([20, 200, 220]) + 20
    gradient = np.stack([x, y, 1 - x], axis=-1) * 255
    blobs = rng.normal(size=(size // 16, size // 16, 3))
    plasma = np.kron(blobs, np.ones((16, 16, 1)))
    for _ in range(3):  # box blur, rolled: smooth and seamless
        plasma = sum(np.roll(plasma, (dy, dx), axis=(0, 1)) for dy in (-8, 0, 8) for dx in (-8, 0, 8)) / 9
    plasma = (plasma - plasma.min()) / (np.ptp(plasma) + 1e-9) * 255
    return {name: np.clip(a, 0, 255).astype(np.uint8) for name, a in
            (("noise", noise), ("checkerboard", checker), ("stripes", stripes), ("gradient", gradient),
             ("plasma", plasma))}
