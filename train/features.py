"""Feature cache for the frozen part of the backbone.

While a part of the backbone is frozen (eval mode, pretrained weights) and images are not
augmented, its output is a fixed function of each image, so computing it once and reusing it across
epochs, seeds and the variants of a run group gives exactly the same training as recomputing it.
Two parts are cached: the whole backbone (stage 1: heads on final feature maps) and the bottom
blocks below a cut (stage 2 "top:K": the top blocks fine-tune on the cached bottom output). Views
a variant's loss needs (G-CAM's mirrored and rescaled images) are cached beside the originals.

The cache key names everything the cached maps depend on: the backbone and a hash of the cached
part's weights (so a fine-tuned backbone, or other weights under the same name, can never share a
key), the part, the image size, the test transform (resize, normalization), the precision, the
images (their bytes, hashed: a copy of the dataset with new modification times, or moved
elsewhere, keeps its cache; a changed file does not) and the view.
"""
from __future__ import annotations

import hashlib
import json
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch.utils.data import DataLoader

from mlc.data import MultiLabelDataset


@dataclass
class FeatureSet:
    """Cached maps of one split, in dataset order, with the targets; ``views`` maps view -> (N, ...)."""

    views: dict[str, torch.Tensor]
    targets: torch.Tensor  # (N, C)

    @property
    def features(self) -> torch.Tensor:
        return self.views["image"]


def part_tag(cut: int | None) -> str:
    """Which part of the backbone a cache holds: all of it, or the blocks below ``cut``."""
    return "full" if cut is None else f"bottom{cut}"


def weights_digest(state: dict[str, torch.Tensor]) -> str:
    """SHA-1 of a state dict's names, dtypes, shapes and values: the identity of the weights
    themselves, whatever the backbone's name or where they were downloaded from."""
    digest = hashlib.sha1()
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        digest.update(f"{name.replace('_orig_mod.', '')}|{tensor.dtype}|{tuple(tensor.shape)};".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


_FINGERPRINTS: dict[tuple[str, int, int], str] = {}  # (path, size, mtime) -> SHA-1, once per process


def _image_fingerprint(path: Path) -> list:
    """An image's identity in a cache key: its size and the SHA-1 of its bytes (VOC 2007, 148 MB:
    ~0.3 s per run). Not its path or modification time: re-provisioned data (the same files copied
    again) would otherwise re-extract every cache, hours on a CPU."""
    try:
        stat = path.stat()
        memo = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
        if memo not in _FINGERPRINTS:
            _FINGERPRINTS[memo] = hashlib.sha1(path.read_bytes()).hexdigest()
    except OSError:  # unreadable: the dataset's own read will say so
        return [str(path), None, None]
    return [stat.st_size, _FINGERPRINTS[memo]]


def cache_key(weights: str, part: str, image_size: int, dataset: MultiLabelDataset, view: str, view_size: int | None,
              precision: str = "float32") -> str:
    """``weights`` names the backbone and the weights of the cached part ("<backbone>:<weights_digest>");
    the dataset's transform (test transform: resize, normalization) and its images' files join the key."""
    inner = getattr(dataset, "dataset", None)  # a wrapper of a dataset (a view of it) keys on its transform
    transform = repr(getattr(dataset, "transform", getattr(inner, "transform", None)))
    blob = json.dumps([weights, part, image_size, transform, precision, view, view_size,
                       [_image_fingerprint(Path(p)) for p in dataset.image_paths]]).encode()
    return hashlib.sha1(blob).hexdigest()[:16]


@torch.no_grad()  # not inference_mode: cached maps later feed autograd as plain inputs
def extract_view(
    part: Callable[[torch.Tensor], torch.Tensor],
    view: Callable[[torch.Tensor], torch.Tensor],
    dataset: MultiLabelDataset,
    device: torch.device,
    batch_size: int,
    num_workers: int,
    autocast: bool = False,
    progress: bool = False,
    desc: str = "features",
) -> torch.Tensor:
    """``part(view(images))`` for every image, in dataset order, as float32 on the CPU.

    The dataset's transform must be deterministic (test transform), or the cache is not exact.
    The loader has its own generator: a DataLoader otherwise draws its base seed from torch's global
    RNG, so a run that extracts a cache would train on other random draws (dropout, sampling) than
    one that reads it from disk.
    """
    from tqdm import tqdm

    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        pin_memory=device.type == "cuda", generator=torch.Generator())
    chunks = []
    for images, _ in tqdm(loader, desc=desc, unit="batch", disable=not progress, leave=False):
        images = view(images.to(device, non_blocking=True)).contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            chunks.append(part(images).float().cpu())
    return torch.cat(chunks)


def cached_tensor(cache_dir: Path, key: str, compute) -> torch.Tensor:
    """Load ``<cache_dir>/<key>.pt`` or compute and store it (shared by the variants of a group).
    Processes that need the same key at once (parallel workers of a CPU recipe) compute it once:
    the others wait on ``<key>.lock`` and then read it."""
    path = cache_dir / f"{key}.pt"
    if path.is_file():
        return torch.load(path, map_location="cpu", weights_only=True)
    cache_dir.mkdir(parents=True, exist_ok=True)
    with _exclusive(cache_dir / f"{key}.lock"):
        if path.is_file():  # another process stored it while this one waited
            return torch.load(path, map_location="cpu", weights_only=True)
        tensor = compute()
        tmp = path.with_suffix(f".{os.getpid()}.{id(tensor)}.tmp")
        torch.save(tensor, tmp)
        tmp.replace(path)
        remove_chunks(cache_dir, key)  # the partial results of a chunked computation, now in the whole
    return tensor


@contextmanager
def _exclusive(lock: Path):
    """An exclusive lock on ``lock`` for the block, released when the process ends (flock); none
    where the platform has no flock (Windows): there two workers may compute a key twice (the same
    maps, each stored atomically)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover  (not on Windows)
        yield
        return
    with lock.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


CHUNK_IMAGES = 256  # images per cache chunk: what a kill during the extraction can cost at most


def extract_in_chunks(cache_dir: Path, key: str, n: int, compute_rows: Callable[[list[int]], torch.Tensor],
                      chunk: int = CHUNK_IMAGES) -> torch.Tensor:
    """``compute_rows(range(n))`` as chunks of ``chunk`` images, each stored on disk as it completes
    (``<key>.chunk<i>-of-<m>.pt``), so a killed extraction (a CPU run over several sessions) resumes
    at the first missing chunk. The chunks are removed once the caller has stored the whole."""
    starts = list(range(0, n, chunk))
    parts = []
    for i, start in enumerate(starts):
        path = cache_dir / f"{key}.chunk{i:04d}-of-{len(starts):04d}.pt"
        if path.is_file():
            parts.append(torch.load(path, map_location="cpu", weights_only=True))
            continue
        tensor = compute_rows(list(range(start, min(n, start + chunk))))
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{id(tensor)}.tmp")
        torch.save(tensor, tmp)
        tmp.replace(path)
        parts.append(tensor)
    return torch.cat(parts)


def remove_chunks(cache_dir: Path, key: str) -> None:
    for path in cache_dir.glob(f"{key}.chunk*-of-*.pt"):
        path.unlink(missing_ok=True)


def gather_rows(source: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``source[index]``; into page-locked memory when the source is pinned, so the copy to the
    GPU can overlap compute (``non_blocking``)."""
    if not source.is_pinned():
        return source[index]
    out = torch.empty((len(index), *source.shape[1:]), dtype=source.dtype, pin_memory=True)
    return torch.index_select(source, 0, index, out=out)


# -- augmented views a cache can hold --------------------------------------------------------------
CROP_AREA = (0.5, 1.0)  # share of the image a cached crop keeps: most objects stay in the picture
CROP_ASPECT = (3 / 4, 4 / 3)


def crop_box(view: int, index: int, width: int, height: int) -> tuple[int, int, int, int]:
    """The seeded crop (left, top, right, bottom) of cached view ``view`` >= 2 of image ``index``.

    Seeded by (view, index) only, not by the run seed, so the seeds of a group share one cache.
    """
    import math
    import random

    rng = random.Random(view * 1_000_003 + index)
    area = rng.uniform(*CROP_AREA) * width * height
    aspect = math.exp(rng.uniform(math.log(CROP_ASPECT[0]), math.log(CROP_ASPECT[1])))
    w = max(1, min(width, int(round(math.sqrt(area * aspect)))))
    h = max(1, min(height, int(round(math.sqrt(area / aspect)))))
    left, top = rng.randint(0, width - w), rng.randint(0, height - h)
    return left, top, left + w, top + h


class CachedView(torch.utils.data.Dataset):
    """View ``view`` of every image of a dataset (whose transform is the deterministic test
    transform), as a top-block fine-tune can train on it from a cache: 0 the image, 1 its mirror,
    2.. seeded crops (each mirrored or not, seeded too). Deterministic, so computing it once is exact."""

    def __init__(self, dataset: MultiLabelDataset, view: int):
        if view < 1:
            raise ValueError("view 0 is the dataset itself")
        self.dataset, self.view = dataset, view

    @property
    def image_paths(self):
        return self.dataset.image_paths

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        import random

        image = self.dataset.load_image(i)
        mirror = self.view == 1
        if self.view >= 2:
            image = image.crop(crop_box(self.view, i, *image.size))
            mirror = random.Random(self.view * 7_919 + i).random() < 0.5
        x = self.dataset.transform(image)
        return (x.flip(-1) if mirror else x), torch.from_numpy(self.dataset.labels[i].astype("float32"))


def view_choice(seed: int, epoch: int, index: int, views: int) -> int:
    """Which cached view image ``index`` (of the fit split) trains on in ``epoch``: a function of
    (run seed, epoch, index) only, so a resumed run and any worker count pick the same ones."""
    import random

    if views <= 1:
        return 0
    return random.Random(((seed * 1_000_003 + epoch) * 10_000_019 + index) % (2**63)).randrange(views)
