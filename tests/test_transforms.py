"""Transforms and image decoding: shapes, determinism, picklability, unusual image modes."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchvision.transforms import v2

from mlc.data import IMAGENET_MEAN, IMAGENET_STD, CSVDataset, VOCDataset, build_transforms, to_rgb
from mlc.data.transforms import FusedAugment, RandomGamma
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


# ----------------------------------------------------------------- fused train augmentation


def _fused(transform) -> FusedAugment:
    step = transform.transforms[-1]
    assert isinstance(step, FusedAugment)
    return step


def _reference(image: Image.Image, size: int, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> torch.Tensor:
    """The plain torchvision test pipeline (the transforms' earlier implementation)."""
    return v2.Compose([
        v2.PILToTensor(), v2.Resize((size, size), antialias=True), v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(mean=list(mean), std=list(std)),
    ])(image)


def _unit(image: Image.Image, size: int) -> torch.Tensor:
    """Resized to (size, size) and scaled to [0, 1], not normalized."""
    steps = [v2.PILToTensor(), v2.Resize((size, size), antialias=True), v2.ToDtype(torch.float32, scale=True)]
    return v2.Compose(steps)(image)


def _unnormalize(x: torch.Tensor, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> torch.Tensor:
    return x * torch.tensor(std).view(3, 1, 1) + torch.tensor(mean).view(3, 1, 1)


@pytest.mark.parametrize("size", [1, 16, 57, 96])
@pytest.mark.parametrize("input_size", [(80, 60), (30, 120), (16, 16)])
def test_test_transform_is_bit_identical_to_torchvision(size: int, input_size: tuple[int, int]) -> None:
    rng = np.random.default_rng(size)
    image = Image.fromarray(rng.integers(0, 256, (input_size[1], input_size[0], 3), dtype=np.uint8))
    out = build_transforms(size, train=False)(image)
    assert out.is_contiguous()
    assert torch.equal(out, _reference(image, size))
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.3, 0.4)
    out = build_transforms(size, train=False, mean=mean, std=std)(image)
    assert torch.equal(out, _reference(image, size, mean, std))


@pytest.mark.parametrize("size", [8, 33, 64])
def test_fused_train_output(photo: Image.Image, size: int) -> None:
    t = build_transforms(size, train=True)
    assert isinstance(t.transforms[-1], FusedAugment) and t.draft_size == size
    for seed in range(5):
        torch.manual_seed(seed)
        out = t(photo)
        assert out.shape == (3, size, size) and out.dtype == torch.float32 and out.is_contiguous()
        assert torch.isfinite(out).all()
        pixels = _unnormalize(out)
        assert pixels.min() >= -1e-5 and pixels.max() <= 1 + 1e-5  # still an image in [0, 1]


def test_flip_only_equals_flipped_test_transform_exactly(photo: Image.Image) -> None:
    flip = build_transforms(40, train=True, rotation=0, brightness=0, contrast=0, gamma=None, hflip=1.0)
    expected = build_transforms(40, train=False)(photo).flip(-1)
    assert torch.equal(flip(photo), expected)
    half = build_transforms(40, train=True, rotation=0, brightness=0, contrast=0, gamma=None, hflip=0.5)
    plain = build_transforms(40, train=False)(photo)
    outs = [half(photo) for _ in range(30)]
    assert all(torch.equal(o, plain) or torch.equal(o, expected) for o in outs)
    assert any(torch.equal(o, plain) for o in outs) and any(torch.equal(o, expected) for o in outs)


@pytest.mark.parametrize("jitter", [False, True])
def test_rotation_fills_corners_with_zero(jitter: bool) -> None:
    size = 48
    image = Image.new("RGB", (64, 64), (250, 30, 200))  # far from the mean colour
    kw = dict(brightness=0.2, contrast=0.2, gamma=(0.8, 1.25)) if jitter else dict(brightness=0, contrast=0, gamma=None)
    t = build_transforms(size, train=True, rotation=45, hflip=0.5, **kw)
    aug = _fused(t)
    big = 0
    for seed in range(40):
        torch.manual_seed(seed)
        out = t(image)
        torch.manual_seed(seed)
        angle = aug.sample()["angle"]
        assert abs(angle) <= 45
        centre = out[:, size // 2 - 4:size // 2 + 4, size // 2 - 4:size // 2 + 4]
        assert (centre.abs() > 0.5).all()  # the image itself is still there
        if abs(angle) >= 10:  # corners come from > 1 px outside the image
            big += 1
            for corner in (out[:, :2, :2], out[:, :2, -2:], out[:, -2:, :2], out[:, -2:, -2:]):
                assert torch.equal(corner, torch.zeros_like(corner)), (seed, angle)
    assert big >= 20


def test_rotation_matches_torchvision_rotate(photo: Image.Image) -> None:
    """Same angle convention (counter-clockwise), centre and flip order as F.rotate(F.hflip(x))."""
    size = 64
    t = build_transforms(size, train=True, rotation=45, brightness=0, contrast=0, gamma=None, hflip=0.5)
    aug = _fused(t)
    mean = list(IMAGENET_MEAN)
    unit = _unit(photo, size)
    for seed in range(6):
        torch.manual_seed(seed)
        out = t(photo)
        torch.manual_seed(seed)
        params = aug.sample()
        ref = v2.functional.horizontal_flip(unit) if params["flip"] else unit
        ref = v2.functional.rotate(ref, params["angle"], interpolation=v2.InterpolationMode.BILINEAR, fill=mean)
        ref = v2.functional.normalize(ref, mean, list(IMAGENET_STD))
        inner = slice(size // 4, 3 * size // 4)
        torch.testing.assert_close(out[:, inner, inner], ref[:, inner, inner], atol=2e-3, rtol=0)
        differs = ((out - ref).abs() > 2e-3).any(0).float().mean()
        assert differs < 0.05, differs  # only pixels on the image's rotated edge (how they blend with the fill)


def test_fused_colour_matches_torchvision_ops(photo: Image.Image) -> None:
    size = 40
    t = build_transforms(size, train=True, rotation=0, hflip=0)
    aug = _fused(t)
    unit = _unit(photo, size)
    functions = {"brightness": v2.functional.adjust_brightness, "contrast": v2.functional.adjust_contrast,
                 "gamma": v2.functional.adjust_gamma}
    orders = set()
    for seed in range(12):
        torch.manual_seed(seed)
        out = t(photo)
        torch.manual_seed(seed)
        ops = aug.sample()["ops"]
        orders.add(tuple(name for name, _ in ops))
        ref = unit
        for name, factor in ops:
            ref = functions[name](ref, factor)
        ref = v2.functional.normalize(ref, list(IMAGENET_MEAN), list(IMAGENET_STD))
        torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)
    assert orders == {("brightness", "contrast", "gamma"), ("contrast", "brightness", "gamma")}


def _mean_intensity(t, image: Image.Image, seeds=range(20)) -> list[float]:
    outs = []
    for seed in seeds:
        torch.manual_seed(seed)
        outs.append(_unnormalize(t(image)).mean().item())
    return outs


def test_gamma_moves_mean_intensity_the_right_way(photo: Image.Image) -> None:
    only = dict(rotation=0, hflip=0, brightness=0, contrast=0)
    base = _unnormalize(build_transforms(32, train=False)(photo)).mean().item()
    brighter = _mean_intensity(build_transforms(32, train=True, gamma=(0.5, 0.7), **only), photo)
    darker = _mean_intensity(build_transforms(32, train=True, gamma=(1.5, 2.0), **only), photo)
    assert min(brighter) > base > max(darker)
    grey = Image.new("RGB", (20, 20), (128, 128, 128))
    values = _mean_intensity(build_transforms(16, train=True, gamma=(0.8, 1.25), **only), grey, range(60))
    v = 128 / 255
    assert min(values) >= v**1.25 - 1e-5 and max(values) <= v**0.8 + 1e-5
    assert min(values) < v < max(values)  # log-uniform around 1: both directions


def test_brightness_and_contrast_stay_in_range() -> None:
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(60, 190, (24, 24, 3), dtype=np.uint8))
    plain = _unnormalize(build_transforms(24, train=False)(image))
    bright = build_transforms(24, train=True, rotation=0, hflip=0, contrast=0, gamma=None, brightness=0.2)
    ratios = []
    for seed in range(40):
        torch.manual_seed(seed)
        ratio = (_unnormalize(bright(image)) / plain)
        assert ratio.max() - ratio.min() < 1e-4  # one factor for every pixel
        ratios.append(ratio.mean().item())
    assert 0.8 - 1e-4 <= min(ratios) < 0.9 and 1.1 < max(ratios) <= 1.2 + 1e-4

    contrast = build_transforms(24, train=True, rotation=0, hflip=0, brightness=0, gamma=None, contrast=0.2)
    weights = torch.tensor([0.2989, 0.587, 0.114]).view(3, 1, 1)
    grey_mean = (plain * weights).sum(0).mean()
    scales = []
    for seed in range(40):
        torch.manual_seed(seed)
        out = _unnormalize(contrast(image))
        assert abs((out * weights).sum(0).mean() - grey_mean) < 1e-4  # blends towards the grey mean
        scales.append((out.std() / plain.std()).item())
    assert 0.8 - 1e-3 <= min(scales) < 0.9 and 1.1 < max(scales) <= 1.2 + 1e-3


def test_fused_train_transform_seeded_and_pickles(photo: Image.Image) -> None:
    t = build_transforms(32, train=True)
    clone = pickle.loads(pickle.dumps(t))
    assert clone.draft_size == 32
    torch.manual_seed(11)
    a = [t(photo) for _ in range(3)]
    torch.manual_seed(11)
    b = [clone(photo) for _ in range(3)]
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(a[0], a[1])


def test_worker_seeding_applies(tmp_path: Path) -> None:
    ds = VOCDataset(make_voc(tmp_path, n_train=4, n_val=1), "train")
    one = ds.subset([0, 0, 0, 0]).with_transform(build_transforms(24, train=True))

    def batch(seed: int) -> torch.Tensor:
        loader = DataLoader(one, batch_size=4, num_workers=1, generator=torch.Generator().manual_seed(seed))
        return next(iter(loader))[0]

    first = batch(0)
    assert torch.equal(first, batch(0))  # same base seed -> same augmentation
    assert not torch.equal(first, batch(1))
    assert all(not torch.equal(first[0], first[k]) for k in range(1, 4))  # same image, new draw each time


def test_train_transform_drafts_large_jpegs_test_transform_does_not(tmp_path: Path) -> None:
    path = write_image(tmp_path / "big.jpg", (200, 160), seed=4)
    csv_file = tmp_path / "list.csv"
    csv_file.write_text(f"path,labels\n{path.name},x\n")
    ds = CSVDataset(csv_file)
    assert ds.load_image(0).size == (200, 160)
    assert ds.load_image(0, 40).size == (50, 40)  # 1/4 scale keeps both sides >= 40
    assert ds.load_image(0, 90).size == (200, 160)  # 1/2 would be 80 px high: no draft
    train = build_transforms(40, train=True)
    image, _ = ds.with_transform(train)[0]
    assert image.shape == (3, 40, 40)
    test = build_transforms(40, train=False)
    assert not hasattr(test, "draft_size")
    assert torch.equal(ds.with_transform(test)[0][0], test(ds.load_image(0)))
    ds.image_paths = [write_image(tmp_path / "big.png", (200, 160), seed=4)]
    assert ds.load_image(0, 40).size == (200, 160)  # only JPEG decoders can draft
