"""Transforms and image decoding: shapes, determinism, picklability, unusual image modes."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from mlc.data import IMAGENET_MEAN, CSVDataset, VOCDataset, build_transforms, to_rgb
from mlc.data.transforms import RandomGamma
from fixtures import make_csv, make_voc, write_image


@pytest.fixture
def photo(tmp_path: Path) -> Image.Image:
    path = write_image(tmp_path / "p.jpg", (80, 60), seed=3, objects=[("cat", (10, 10, 40, 30))])
    return Image.open(path).convert("RGB")


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("size", [32, 57])
def test_output_shape_and_dtype(photo: Image.Image, train: bool, size: int) -> None:
    out = build_transforms(size, train=train)(photo)
    assert out.shape == (3, size, size) and out.dtype == torch.float32
    assert torch.isfinite(out).all()


def test_test_transform_is_deterministic_train_is_random(photo: Image.Image) -> None:
    test_t = build_transforms(32, train=False)
    torch.manual_seed(0)
    a = test_t(photo)
    torch.manual_seed(1)
    assert torch.equal(a, test_t(photo))

    train_t = build_transforms(32, train=True)
    torch.manual_seed(0)
    x = train_t(photo)
    torch.manual_seed(0)
    assert torch.equal(x, train_t(photo))  # seeded -> reproducible
    outs = [train_t(photo) for _ in range(4)]
    assert all(not torch.equal(x, o) for o in outs)


def test_train_without_augmentation_equals_test(photo: Image.Image) -> None:
    plain = build_transforms(32, train=True, rotation=0, brightness=0, contrast=0, gamma=None, hflip=0)
    assert torch.equal(plain(photo), build_transforms(32, train=False)(photo))


def test_normalization_uses_mean_and_std() -> None:
    mean_color = tuple(round(255 * m) for m in IMAGENET_MEAN)
    out = build_transforms(16, train=False)(Image.new("RGB", (40, 20), mean_color))
    assert out.abs().max() < 0.02
    out = build_transforms(16, train=False, mean=(0, 0, 0), std=(1, 1, 1))(Image.new("RGB", (8, 8), (255, 0, 255)))
    assert out[0].min() == 1.0 and out[1].max() == 0.0


def test_hflip_only_flips(photo: Image.Image) -> None:
    flip = build_transforms(32, train=True, rotation=0, brightness=0, contrast=0, gamma=None, hflip=1.0)
    assert torch.allclose(flip(photo), build_transforms(32, train=False)(photo).flip(-1), atol=1e-6)


def test_random_gamma_range() -> None:
    image = torch.full((3, 4, 4), 0.5)
    torch.manual_seed(0)
    values = torch.stack([RandomGamma((0.8, 1.25))(image)[0, 0, 0] for _ in range(200)])
    assert values.min() >= 0.5**1.25 - 1e-6 and values.max() <= 0.5**0.8 + 1e-6
    assert values.std() > 0.01


def test_transforms_pickle(photo: Image.Image) -> None:
    for train in (True, False):
        t = build_transforms(24, train=train)
        clone = pickle.loads(pickle.dumps(t))
        torch.manual_seed(5)
        a = t(photo)
        torch.manual_seed(5)
        assert torch.equal(a, clone(photo))


def test_labels_unchanged_through_dataset_and_loader(tmp_path: Path) -> None:
    ds = VOCDataset(make_voc(tmp_path, n_train=6, n_val=3), "train")
    train_ds = ds.with_transform(build_transforms(40, train=True))
    for i in range(len(ds)):
        image, target = train_ds[i]
        assert image.shape == (3, 40, 40)
        assert target.tolist() == ds.labels[i].astype(float).tolist()
    clone = pickle.loads(pickle.dumps(train_ds))  # what spawn-based DataLoader workers receive
    assert clone[0][0].shape == (3, 40, 40)
    images, targets = next(iter(DataLoader(train_ds, batch_size=4, shuffle=False)))
    assert images.shape == (4, 3, 40, 40) and images.dtype == torch.float32
    assert targets.dtype == torch.float32
    np.testing.assert_array_equal(targets.numpy(), ds.labels[:4])


# ------------------------------------------------------------------------------ image modes -> RGB


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "LA", "1", "I;16", "CMYK"])
def test_image_modes_load_as_rgb(tmp_path: Path, mode: str) -> None:
    suffix = ".jpg" if mode == "CMYK" else ".png"
    path = write_image(tmp_path / f"img{suffix}", (30, 20), seed=1, mode=mode)
    if mode != "CMYK":
        assert Image.open(path).mode == mode
    csv_file = tmp_path / "list.csv"
    csv_file.write_text(f"path,labels\n{path.name},x\n")
    ds = CSVDataset(csv_file)
    image = ds.load_image(0)
    assert image.mode == "RGB" and image.size == (30, 20)
    tensor, target = ds.with_transform(build_transforms(16, train=False))[0]
    assert tensor.shape == (3, 16, 16) and target.tolist() == [1.0]


def test_sixteen_bit_is_rescaled_not_clipped() -> None:
    gray = np.array([[0, 257 * 100, 32768, 65535]], dtype=np.uint16)
    rgb = np.asarray(to_rgb(Image.fromarray(gray)))
    assert rgb.shape == (1, 4, 3)
    np.testing.assert_array_equal(rgb[0, :, 0], [0, 100, 128, 255])
    assert (rgb[..., 0] == rgb[..., 2]).all()


def test_sixteen_bit_fixture_matches_eight_bit_content(tmp_path: Path) -> None:
    p8 = write_image(tmp_path / "a.png", 24, seed=2, mode="L")
    p16 = write_image(tmp_path / "b.png", 24, seed=2, mode="I;16")
    a = np.asarray(to_rgb(Image.open(p8)))
    b = np.asarray(to_rgb(Image.open(p16)))
    np.testing.assert_array_equal(a, b)


def test_transparency_composited_on_white() -> None:
    rgba = Image.new("RGBA", (2, 1), (10, 20, 30, 255))
    rgba.putpixel((1, 0), (0, 0, 0, 0))  # fully transparent black
    rgb = np.asarray(to_rgb(rgba))
    assert rgb[0, 0].tolist() == [10, 20, 30] and rgb[0, 1].tolist() == [255, 255, 255]


def test_csv_fixture_images_load(tmp_path: Path) -> None:
    ds = CSVDataset(make_csv(tmp_path, n_images=4, image_size=20))
    assert all(ds.load_image(i).size == (20, 20) for i in range(len(ds)))
