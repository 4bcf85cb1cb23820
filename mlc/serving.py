"""Serving the five variants to the app: safe image decoding, one shared frozen backbone, and the
tables and figures of the predict, explain, flip-consistency and analysis views.

Free of Gradio, so the logic is tested and benchmarked without a server (``app.py`` only wires it).
"""
from __future__ import annotations

import copy
import html
import json
import os
import re
import struct
import threading
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import numpy as np
import pandas as pd
import torch
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import FancyArrowPatch
from PIL import Image, ImageOps, JpegImagePlugin, PngImagePlugin
from torch import nn

from mlc import graph as label_graph
from mlc.data.base import to_rgb
from mlc.data.transforms import build_transforms
from mlc.explain import explanation_maps, flip_consistency, map_to_image, normalize_map, overlay
from mlc.models import MultiLabelModel, load_model
from mlc.models.backbones import PACKAGED_LITES
from mlc.stats import LabelStatistics

VARIANTS: tuple[str, ...] = ("baseline", "ggnn", "ssgrl", "mlgcn", "gcam")
TSNE_METHODS: tuple[str, ...] = ("baseline", "mlgcn", "gcam")  # the ones with classifiers over pooled features
CLASS_GROUPS: dict[str, tuple[str, ...]] = {
    "vehicles": ("aeroplane", "bicycle", "boat", "bus", "car", "motorbike", "train"),
    "animals": ("bird", "cat", "cow", "dog", "horse", "sheep"),
    "indoor objects": ("bottle", "chair", "diningtable", "pottedplant", "sofa", "tvmonitor"),
    "person": ("person",),
}
GROUP_COLORS: dict[str, str] = {
    "vehicles": "tab:blue", "animals": "tab:orange", "indoor objects": "tab:green", "person": "tab:red",
    "other": "tab:gray",
}
METHOD_COLORS: dict[str, str] = dict(zip(VARIANTS, ("tab:gray", "tab:purple", "tab:brown", "tab:blue", "tab:orange")))

MAX_FILE_BYTES = 50 * 2**20
MAX_DECODE_PIXELS = 40_000_000  # ~160 MB as RGBA; JPEGs are shrunk while decoding, before this check
MAX_SIDE = 1024  # decoded images are downscaled to this; the models see 224-448 px
DISPLAY_SIDE = 448  # overlays are drawn at this size
TINY_SIDE = 32


class RequestError(ValueError):
    """A request the app cannot serve (bad image, unknown class, no model); the message is shown as is."""


# -- images ---------------------------------------------------------------------------------------
@dataclass
class DecodedImage:
    """An upload as RGB at most ``MAX_SIDE`` px, with its original size for the status line."""

    image: Image.Image
    original_size: tuple[int, int]

    @property
    def note(self) -> str:
        w, h = self.original_size
        if min(w, h) < TINY_SIDE:
            return f"The image is only {w} x {h} pixels; it was upscaled, so expect unreliable scores."
        if self.image.size != self.original_size:
            return f"The {w} x {h} image was downscaled to {self.image.width} x {self.image.height} before resizing."
        return ""


def _megapixels(size: tuple[int, int]) -> str:
    return f"{size[0]} x {size[1]} pixels ({size[0] * size[1] / 1e6:.0f} MP)"


def _open_header(path: Path) -> Image.Image:
    """Open without decoding pixels. PIL refuses images over its bomb limit already here, before a
    JPEG could be asked to decode at 1/8 scale, so those are reopened with the JPEG plugin directly."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return Image.open(path)
    except Image.UnidentifiedImageError:
        raise RequestError("The file is not an image that can be read (PNG, JPEG, WebP, BMP, TIFF, GIF ...).") from None
    except Image.DecompressionBombError:
        with open(path, "rb") as f:
            magic = f.read(8)
        if magic.startswith(b"\xff\xd8\xff"):
            return JpegImagePlugin.JpegImageFile(str(path))
        if magic == b"\x89PNG\r\n\x1a\n":
            with PngImagePlugin.PngImageFile(str(path)) as png:
                raise RequestError(f"The image is too large to decode safely: {_megapixels(png.size)}. "
                                   "Please downscale it (or send it as a JPEG).") from None
        raise RequestError("The image is too large to decode safely. Please downscale it.") from None


def _decode(image: Image.Image, max_side: int) -> Image.Image:
    """Decode pixels, letting JPEG skip detail (DCT scaling) and refusing what would exhaust memory."""
    image.draft(image.mode, (max_side, max_side))  # no-op except for JPEG
    if image.width * image.height > MAX_DECODE_PIXELS:
        raise RequestError(f"The image is too large to decode safely: {_megapixels(image.size)}; the limit is "
                           f"{MAX_DECODE_PIXELS / 1e6:.0f} MP. Please downscale it (or send it as a JPEG).")
    image.load()
    rgb = to_rgb(ImageOps.exif_transpose(image))
    rgb.thumbnail((max_side, max_side), Image.Resampling.BILINEAR, reducing_gap=2.0)
    return rgb


def load_image(path: str | Path, max_side: int = MAX_SIDE) -> DecodedImage:
    """Decode an upload ourselves, so every failure (not an image, truncated, huge) is a clear RequestError."""
    path = Path(path)
    if not path.is_file():
        raise RequestError("No image was received. Upload an image first.")
    size = path.stat().st_size
    if size == 0:
        raise RequestError("The uploaded file is empty.")
    if size > MAX_FILE_BYTES:
        raise RequestError(f"The file is {size / 2**20:.0f} MB; the limit is {MAX_FILE_BYTES / 2**20:.0f} MB.")
    try:
        with _open_header(path) as image:
            original = image.size
            return DecodedImage(_decode(image, max_side), original)
    except RequestError:
        raise
    except Image.DecompressionBombError as err:
        raise RequestError(f"The image is too large to decode safely ({err}). Please downscale it.") from None
    except (OSError, SyntaxError, ValueError, EOFError, struct.error) as err:
        raise RequestError(f"The image could not be decoded: the file is truncated or corrupt ({err}).") from None


@lru_cache(maxsize=8)
def _eval_transform(
    size: int, mean: tuple[float, ...], std: tuple[float, ...]
) -> Callable[[Image.Image], torch.Tensor]:
    return build_transforms(size, train=False, mean=mean, std=std)


def model_input(image: Image.Image, model: MultiLabelModel) -> torch.Tensor:
    """(1, 3, S, S): the evaluation transform of training (square resize, the model's normalization)."""
    norm = model.normalization
    return _eval_transform(model.image_size, tuple(norm.mean), tuple(norm.std))(image).unsqueeze(0)


def display_array(image: Image.Image, side: int = DISPLAY_SIDE) -> np.ndarray:
    """RGB uint8 canvas for the overlays: longer side ``side`` px (tiny images are enlarged), same aspect."""
    scale = side / max(image.size)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return np.asarray(image.resize(size, Image.Resampling.BILINEAR), dtype=np.uint8)


# -- models ---------------------------------------------------------------------------------------
class SharedBackbone(nn.Module):
    """One frozen backbone module used by several heads (``ModelSet.features`` runs it once per input)."""

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.inner = backbone.requires_grad_(False).eval()
        self.name: str = backbone.name
        self.num_features: int = backbone.num_features
        self.normalization = backbone.normalization
        self.passes = 0  # backbone evaluations so far (the benchmark and tests read it)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        self.passes += 1
        return self.inner(images)


class TopOnSharedBottom(nn.Module):
    """A backbone whose top blocks were fine-tuned ("top:K"): the pretrained bottom (blocks below K)
    is shared with the other such models, only the top is the model's own. ``ModelSet.features``
    runs the shared bottom once per input and each model's top on its output."""

    def __init__(self, bottom: SharedBackbone, own: nn.Module, cut: int):
        super().__init__()
        self.bottom, self.cut = bottom, cut
        self.top = nn.ModuleList(own.top_modules(cut)).requires_grad_(False).eval()
        self._own = [own]  # a list: not registered, so the own copy's bottom is not counted twice
        self.name: str = own.name
        self.num_features: int = own.num_features
        self.normalization = own.normalization

    def forward_bottom(self, images: torch.Tensor) -> torch.Tensor:
        self.bottom.passes += 1
        return self.bottom.inner.forward_bottom(images, self.cut)

    def forward_top(self, x: torch.Tensor) -> torch.Tensor:
        return self._own[0].forward_top(x, self.cut)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.forward_top(self.forward_bottom(images))


def share_backbones(models: Mapping[str, MultiLabelModel]) -> list[SharedBackbone]:
    """Give models whose backbone is the packaged one (not in the checkpoint) one shared module, and
    models that fine-tuned only its top blocks ("top:K") one shared bottom.

    Models match when backbone name, image size and normalization agree; the other copies are freed.
    """
    from mlc.models.base import top_cut

    shared: dict[tuple, SharedBackbone] = {}

    def key_of(model: MultiLabelModel) -> tuple:
        norm = model.normalization
        return (model.backbone_name, model.image_size, tuple(norm.mean), tuple(norm.std))

    # where some models fine-tuned only the top blocks, the pretrained ones run the shared bottom
    # too (then their own, pretrained, top): one pass of the bottom per input for all of them
    cuts = {key_of(m): top_cut(m.backbone_trained) for m in models.values()
            if m.backbone_trained not in (None, "all")}
    for model in models.values():
        key = key_of(model)
        if model.backbone_is_pretrained and key not in cuts:
            if key not in shared:
                shared[key] = SharedBackbone(model.backbone)
            model.backbone = shared[key]
            continue
        if model.backbone_is_pretrained:
            cut = cuts[key]  # its top is simply the pretrained one
        else:
            cut = top_cut(model.backbone_trained) if model.backbone_trained != "all" else None
        if cut is None:
            continue
        bottom_key = (*key, "bottom", cut)
        if bottom_key not in shared:
            # the bottom of a "top:K" checkpoint is rebuilt from the packaged weights: any of them will do
            shared[bottom_key] = SharedBackbone(copy.deepcopy(model.backbone))
        model.backbone.requires_grad_(False).eval()
        model.backbone = TopOnSharedBottom(shared[bottom_key], model.backbone, cut)
    return list(shared.values())


@dataclass
class Method:
    """One loaded variant and its evaluation (``eval.json``), as the app shows it."""

    name: str
    model: MultiLabelModel
    evaluation: dict | None = None
    note: str = ""  # e.g. why eval.json is missing


def _read_evaluation(folder: Path) -> tuple[dict | None, str]:
    path = folder / "eval.json"
    if not path.is_file():
        return None, "no eval.json"
    try:
        evaluation = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        return None, f"eval.json unreadable ({type(err).__name__}: {err})"
    metrics = evaluation.get("metrics") if isinstance(evaluation, dict) else None
    if not isinstance(metrics, dict) or not isinstance(metrics.get("ap"), list):
        return None, "eval.json has no metrics.ap list"
    return evaluation, ""


OFFLINE_BACKBONES = (*PACKAGED_LITES, "tiny")  # what a visitor's source may use: nothing to download
MAX_VISITOR_REPO_BYTES = 200 * 2**20
HUB_PATTERNS = ["*config.json", "*eval.json", "*model.safetensors", "report.json"]


def _load_method(name: str, folder: Path, trusted: bool = True) -> Method:
    if not folder.is_dir():
        raise RequestError(f"missing: no {name}/ folder")
    if not trusted:  # a visitor's source must not make the server download backbone weights
        try:
            backbone = json.loads((folder / "config.json").read_text()).get("backbone")
        except (OSError, ValueError, AttributeError):
            raise RequestError("not a saved mlc model (config.json missing or unreadable)") from None
        if backbone not in OFFLINE_BACKBONES:
            raise RequestError(f"its backbone is not one of {', '.join(OFFLINE_BACKBONES)} (would need a download)")
    model = load_model(folder).eval()
    evaluation, note = _read_evaluation(folder)
    return Method(name, model, evaluation, note)


def split_revision(source: str) -> tuple[str, str | None]:
    """"user/repo@revision" -> ("user/repo", "revision"); a pinned commit makes a Space reproducible."""
    repo, sep, revision = source.partition("@")
    return (repo, revision or None) if sep else (source, None)


def _fetch_hub_repo(repo_id: str, trusted: bool = True) -> Path:
    """Download (or find in the cache) the JSON and safetensors files of a Hub repo (``repo@revision`` pins one)."""
    from huggingface_hub import HfApi, snapshot_download

    repo_id, revision = split_revision(repo_id)
    try:
        if not trusted:  # a visitor's repo: refuse before downloading anything large
            info = HfApi().model_info(repo_id, revision=revision, files_metadata=True)
            total = sum(f.size or 0 for f in info.siblings or [] if any(
                Path(f.rfilename).match(p) for p in HUB_PATTERNS))
            if total > MAX_VISITOR_REPO_BYTES:
                raise RequestError(f"the repo's model files are {total / 2**20:.0f} MB; the limit is "
                                   f"{MAX_VISITOR_REPO_BYTES / 2**20:.0f} MB")
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=HUB_PATTERNS))
    except RequestError:
        raise
    except Exception as err:  # offline, unknown repo, invalid id, network: all end as one message
        raise RequestError(f"could not fetch Hub repo {repo_id!r} ({type(err).__name__})") from None


_PATH = re.compile(r"(?<![\w.~-])(?:/[^\s'\"():,;]+)+")  # an absolute path


def public_problem(err: BaseException, root: Path | None, trusted: bool) -> str:
    """What a visitor may read about a failed load: the problem, never a server path; for a
    visitor's own source only the kind of problem (its files' contents are not echoed)."""
    from mlc.models import CheckpointError

    if isinstance(err, RequestError):
        text = str(err)
    elif not trusted:
        text = ("not a valid saved mlc model (config.json / model.safetensors missing or inconsistent)"
                if isinstance(err, (CheckpointError, ValueError, KeyError)) else f"could not be loaded ({type(err).__name__})")
    else:
        text = f"{str(err)}" if isinstance(err, CheckpointError) else f"{type(err).__name__}: {err}"
    if root is not None:
        text = text.replace(str(root) + "/", "").replace(str(root), "")
    return _PATH.sub(lambda m: Path(m.group(0)).name, text)[:300]


def _model_folders(root: Path) -> dict[str, Path]:
    """``root`` is one saved model (named by its config), or holds one subfolder per variant."""
    config = root / "config.json"
    if config.is_file():
        try:
            return {str(json.loads(config.read_text())["model_name"]): root}
        except (OSError, ValueError, KeyError, TypeError):
            return {root.name: root}
    return {name: root / name for name in VARIANTS}


def configure_memory() -> bool:
    """Serve large buffers from mmap so memory goes back to the system once a request ends.

    glibc raises its mmap threshold after the first large free, and later 100 MB image buffers then
    come from the heap and stay with the process: after six 40 MP uploads the app kept 426 MB.
    A fixed threshold (4 MB) turns that off. Returns False where this is not glibc."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        return bool(libc.mallopt(-3, 4 * 2**20))  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        return False


def configure_threads() -> int:
    """Torch threads: all cores but one (``MLC_NUM_THREADS`` overrides).

    The spare core serves HTTP, PNG encoding and the figures of the other queued request. On a busy
    2-core machine two OpenMP threads that lose their core stall each other: a predict request took
    0.68 s median with 2 threads against 0.19 s with 1.
    """
    threads = int(os.environ.get("MLC_NUM_THREADS") or 0) or max(1, len(os.sched_getaffinity(0)) - 1)
    torch.set_num_threads(threads)
    return threads


@dataclass
class ModelSet:
    """The models the app serves, the problems met loading the others, and where they came from."""

    methods: dict[str, Method]
    problems: dict[str, str] = field(default_factory=dict)
    source: str = ""
    report: dict | None = None  # report.json of the run group (seeds, bootstrap intervals), if shipped

    def __post_init__(self) -> None:
        self.shared = share_backbones({name: m.model for name, m in self.methods.items()})
        self._lock = threading.Lock()
        self._figure_lock = threading.Lock()

    @classmethod
    def load(cls, source: str | Path, trusted: bool = True) -> "ModelSet":
        """Every variant under a local folder or Hub repo id; a broken one is recorded, not raised.

        ``trusted``: the operator's source (start-up). A visitor's source (only where the operator
        opted in) may use no backbone that needs a download, a Hub repo's files are size-checked
        first, and what went wrong is told without paths or file contents.
        """
        text = str(source).strip()
        local = Path(text).is_dir()
        if not local and not trusted and not looks_like_repo(text):
            return cls({}, {"source": "not a model folder here, nor a Hub repo id (user/name[@revision])"}, text)
        try:
            root = Path(text) if local else _fetch_hub_repo(text, trusted)
        except RequestError as err:
            return cls({}, {"source": str(err)}, text)
        methods, problems = {}, {}
        for name, folder in _model_folders(root).items():
            try:
                methods[name] = _load_method(name, folder, trusted)
            except Exception as err:  # a broken checkpoint must not take the others down
                problems[name] = public_problem(err, root, trusted)
        if not methods and not trusted:  # a folder with nothing to load reads like a missing one
            problems = {"source": "not a model folder here, nor a Hub repo id (user/name[@revision])"}
        return cls(methods, problems, text, _read_report(root))

    @property
    def display_source(self) -> str:
        """The source as visitors see it: a Hub repo id, or a local folder's name (never its path)."""
        text = self.source
        if not text:
            return "nowhere"
        return Path(text).name if Path(text).is_dir() or text.startswith(("/", ".")) else text

    @classmethod
    def from_models(cls, models: Mapping[str, MultiLabelModel], source: str = "memory") -> "ModelSet":
        return cls({name: Method(name, model.eval()) for name, model in models.items()}, {}, source)

    @property
    def names(self) -> list[str]:
        return list(self.methods)

    @property
    def classes(self) -> list[str]:
        """Union of the models' classes, in order of first appearance."""
        return list(dict.fromkeys(c for m in self.methods.values() for c in m.model.classes))

    def require_models(self) -> None:
        if not self.methods:
            raise RequestError(f"No model is loaded (source: {self.source or 'none'}). See the model status above.")

    def method(self, name: str) -> Method:
        if name not in self.methods:
            raise RequestError(f"Unknown method {name!r}; loaded: {', '.join(self.names) or 'none'}.")
        return self.methods[name]

    @contextmanager
    def session(self) -> Iterator[None]:
        """One request at a time on the models (the cores are already busy)."""
        with self._lock:
            yield

    @torch.no_grad()
    def features(self, inputs: Mapping[str, torch.Tensor], flipped: bool = False) -> dict[str, torch.Tensor]:
        """Each method's backbone maps; methods sharing a backbone and an input share one pass."""
        computed: dict[tuple[int, int], torch.Tensor] = {}
        out = {}
        for name, m in self.methods.items():
            backbone = m.model.backbone
            x = inputs[name].flip(-1) if flipped else inputs[name]
            if isinstance(backbone, TopOnSharedBottom):  # shared bottom once, then this model's top
                key = (id(backbone.bottom), id(inputs[name]))
                if key not in computed:
                    computed[key] = backbone.forward_bottom(x)
                out[name] = backbone.forward_top(computed[key])
                continue
            key = (id(backbone), id(inputs[name]))  # inputs() gives equal preprocessing one tensor
            if key not in computed:
                computed[key] = m.model.forward_features(x)
            out[name] = computed[key]
        return out

    def inputs(self, image: Image.Image) -> dict[str, torch.Tensor]:
        """Each method's input tensor; methods with the same preprocessing get the same tensor."""
        by_key: dict[tuple, torch.Tensor] = {}
        out = {}
        for name, m in self.methods.items():
            norm = m.model.normalization
            key = (m.model.image_size, tuple(norm.mean), tuple(norm.std))
            if key not in by_key:
                by_key[key] = model_input(image, m.model)
            out[name] = by_key[key]
        return out

    def figure(self, key: tuple, make: Callable[[], Figure], keep: int = 64) -> str:
        """A figure of this model set rendered to PNG once and then served from disk: the analysis
        views are fixed per model set (and per slider value), and rendering plus Gradio's encoding of
        a matplotlib figure cost seconds per request. Keeps the ``keep`` most recent per kind."""
        import tempfile
        from collections import OrderedDict

        with self._figure_lock:
            cache = self.__dict__.setdefault("_figures", OrderedDict())
            if key in cache and Path(cache[key]).is_file():
                cache.move_to_end(key)
                return cache[key]
        fig = make()
        folder = self.__dict__.setdefault("_figure_dir", tempfile.mkdtemp(prefix="mlc-figures-"))
        path = str(Path(folder) / f"{abs(hash(key)):x}.png")
        fig.savefig(path, dpi=100)
        with self._figure_lock:
            cache[key] = path
            same_kind = [k for k in cache if k[0] == key[0]]
            for old in same_kind[:-keep]:
                Path(cache.pop(old)).unlink(missing_ok=True)
        return path

    @cached_property
    def tsne(self) -> pd.DataFrame:
        """2-D t-SNE of the classifiers (fixed once loaded, so computed once)."""
        return classifier_embedding(self)


def looks_like_repo(text: str) -> bool:
    """A Hub repo id, optionally pinned (``user/name@revision``)."""
    from mlc.models.base import looks_like_repo_id

    return looks_like_repo_id(split_revision(text)[0])


def md(text: Any) -> str:
    """Text from a checkpoint or a visitor, safe inside Markdown: HTML escaped, Markdown syntax
    backslash-escaped, one line (a class named "[x](http://...)" stays text, not a link)."""
    text = html.escape(str(text), quote=False).replace("\n", " ")
    return re.sub(r"([\\`*_{}\[\]()#+\-!|~>])", r"\\\1", text)


_cell = md  # a table cell: the same escaping


def _evaluation_summary(method: Method) -> str:
    ev = method.evaluation
    if ev is None:
        return method.note or "-"
    map_ = ev["metrics"].get("map")
    return (f"mAP {'-' if map_ is None else f'{100 * map_:.1f}'} on {ev.get('dataset', '?')} "
            f"{ev.get('split', '?')} ({ev.get('num_images', '?')} images)")


def status_markdown(model_set: ModelSet) -> str:
    """Which models serve, which failed and why, and whether the backbone is shared."""
    wanted = list(dict.fromkeys([*model_set.methods, *model_set.problems]))
    head = f"**Models** from {md(model_set.display_source)}: {len(model_set.methods)} of {len(wanted)} loaded"
    for backbone in model_set.shared:
        whole = [n for n, m in model_set.methods.items() if m.model.backbone is backbone]
        tops = [n for n, m in model_set.methods.items() if getattr(m.model.backbone, "bottom", None) is backbone]
        if whole:
            head += f"; {', '.join(whole)} share one `{backbone.name}` backbone"
        if tops:
            cut = model_set.methods[tops[0]].model.backbone.cut
            head += (f"; {', '.join(tops)} share `{backbone.name}` blocks 0-{cut - 1} and run their own "
                     f"fine-tuned top blocks")
    rows = ["| method | status | backbone | image size | evaluation |", "|---|---|---|---|---|"]
    for name in wanted:
        if name in model_set.methods:
            m = model_set.methods[name]
            model, summary = m.model, _cell(_evaluation_summary(m))
            rows.append(f"| {name} | loaded | {model.backbone_name} | {model.image_size} | {summary} |")
        else:
            rows.append(f"| {name} | **not loaded**: {_cell(model_set.problems[name])} | | | |")
    return head + ".\n\n" + "\n".join(rows)


# -- predict --------------------------------------------------------------------------------------
def predict_probabilities(model_set: ModelSet, image: Image.Image) -> pd.DataFrame:
    """(classes x methods) sigmoid scores plus their mean, sorted by the mean (NaN: class unknown to a model)."""
    model_set.require_models()
    with model_set.session(), torch.no_grad():
        features = model_set.features(model_set.inputs(image))
        logits = {name: m.model.forward_head(features[name]).logits for name, m in model_set.methods.items()}
        table = _score_table(model_set, logits)
    table["mean"] = table.mean(axis=1)
    return table.sort_values("mean", ascending=False, kind="stable")


def _score_table(model_set: ModelSet, logits: Mapping[str, torch.Tensor]) -> pd.DataFrame:
    """(classes x methods) probabilities of the first image; NaN where a model lacks the class."""
    columns = {
        name: pd.Series(torch.sigmoid(x)[0].double().numpy(), index=model_set.methods[name].model.classes)
        for name, x in logits.items()
    }
    return pd.DataFrame(columns, index=model_set.classes)


def predicted_labels(table: pd.DataFrame, threshold: float, top_k: int) -> dict[str, list[str]]:
    """Per method: classes scoring >= threshold among its own top-k (the papers' top-k protocol)."""
    out = {}
    for name in table.columns.drop("mean"):
        top = table[name].dropna().sort_values(ascending=False, kind="stable").head(max(1, int(top_k)))
        out[name] = [str(c) for c, s in top.items() if s >= threshold]
    return out


def labels_html(labels: Mapping[str, list[str]], threshold: float, top_k: int) -> str:
    """The predicted labels at a glance: one row per method, one chip per label; a label that only
    some methods predict is marked, and a method that predicts nothing says so."""
    methods = list(labels)
    every = set.intersection(*(set(v) for v in labels.values())) if labels else set()
    some = set().union(*(set(v) for v in labels.values())) if labels else set()
    rows = []
    for method in methods:
        chips = "".join(
            f'<span class="mlc-chip{" mlc-differs" if c not in every else ""}" '
            f'title="{"predicted by every method" if c in every else "not predicted by every method"}">'
            f'{html.escape(c)}{" *" if c not in every else ""}</span>'
            for c in labels[method]
        ) or '<span class="mlc-none">nothing above the threshold</span>'
        rows.append(f"<tr><th>{html.escape(method)}</th><td>{chips}</td></tr>")
    differ = sorted(some - every)
    summary = (f"All methods agree on: <b>{html.escape(', '.join(sorted(every)) or 'nothing')}</b>. "
               + (f"They differ on: <b>{html.escape(', '.join(differ))}</b> (marked *)." if differ
                  else "No method predicts anything the others do not."))
    style = ("<style>.mlc-labels{border-collapse:collapse;width:100%}.mlc-labels th{text-align:left;"
             "padding:4px 8px;white-space:nowrap;vertical-align:top}.mlc-labels td{padding:4px}"
             ".mlc-chip{display:inline-block;margin:2px;padding:1px 8px;border-radius:10px;"
             "background:#dbeafe;color:#1e3a8a;white-space:nowrap}.mlc-differs{background:#fef3c7;color:#92400e;"
             "border:1px dashed #d97706}.mlc-none{color:#6b7280;font-style:italic}</style>")
    return (f'{style}<div class="mlc-labels-box"><p>Labels with score &ge; {threshold:.2f} within each method\'s '
            f"top {int(top_k)}. {summary}</p><table class=\"mlc-labels\">{''.join(rows)}</table></div>")


def _grouped_bars(ax, table: pd.DataFrame, colors: Mapping[str, str]) -> None:
    """Bars per row (x) and column (colour), side by side within a row."""
    methods = list(table.columns)
    width = 0.8 / max(1, len(methods))
    x = np.arange(len(table))
    for i, name in enumerate(methods):
        ax.bar(x + (i - (len(methods) - 1) / 2) * width, table[name].to_numpy(dtype=float), width,
               label=name, color=colors.get(name))
    ax.set_xticks(x, [str(c) for c in table.index], rotation=30, ha="right")
    ax.grid(axis="y", alpha=0.3)


def probability_bars_html(table: pd.DataFrame, top_k: int, threshold: float) -> str:
    """The top-k classes (by mean score) as plain HTML bars, one per method, with the threshold
    marked: built in well under a millisecond (a matplotlib chart cost 300 ms per request), sharp
    at any width, and readable on a phone."""
    top = table.drop(columns="mean").head(max(1, int(top_k)))
    legend = "".join(f'<span class="mlc-key"><i style="background:{_css_colour(m)}"></i>{html.escape(m)}</span>'
                     for m in top.columns)
    rows = []
    for cls, scores in top.iterrows():
        bars = "".join(
            f'<div class="mlc-bar" title="{html.escape(m)}: {v:.3f}"><i style="width:{100 * v:.1f}%;'
            f'background:{_css_colour(m)}"></i><span>{v:.2f}</span></div>'
            for m, v in scores.items() if v == v  # NaN: the method lacks the class
        )
        rows.append(f'<div class="mlc-row"><div class="mlc-class">{html.escape(str(cls))}</div>'
                    f'<div class="mlc-bars" style="--t:{100 * threshold:.1f}%">{bars}</div></div>')
    style = ("<style>.mlc-chart{font-size:13px}.mlc-row{display:flex;gap:8px;margin:6px 0;align-items:center}"
             ".mlc-class{width:96px;flex:none;text-align:right;overflow-wrap:anywhere}.mlc-bars{flex:1;position:relative}"
             ".mlc-bars:after{content:'';position:absolute;top:0;bottom:0;left:var(--t);border-left:1px dashed #111}"
             ".mlc-bar{position:relative;height:11px;margin:1px 0;background:#f3f4f6}.mlc-bar i{display:block;height:100%}"
             ".mlc-bar span{position:absolute;right:2px;top:-2px;font-size:10px;color:#374151}"
             ".mlc-key{margin-right:10px;white-space:nowrap}.mlc-key i{display:inline-block;width:10px;height:10px;"
             "margin-right:4px}</style>")
    return (f'{style}<div class="mlc-chart"><div>Top {len(top)} classes by mean score; dashed line: threshold '
            f"{threshold:.2f}. {legend}</div>{''.join(rows)}</div>")


def _css_colour(method: str) -> str:
    from matplotlib.colors import to_hex

    return to_hex(METHOD_COLORS.get(method, "tab:gray"))


# -- explain and flip consistency -------------------------------------------------------------------
@dataclass
class ClassMap:
    """One method's map for one class, at feature-map resolution."""

    method: str
    kind: str  # CAM | Grad-CAM | attention
    map: np.ndarray  # (h, w)
    probability: float


def resolve_class(model_set: ModelSet, class_name: str | None, mean_scores: pd.Series) -> str:
    """The requested class, or the top-scoring one (mean over methods) when none is given."""
    if not class_name:
        return str(mean_scores.idxmax())
    if class_name not in model_set.classes:
        raise RequestError(f"Unknown class {class_name!r}; the models know: {', '.join(model_set.classes)}.")
    return class_name


def class_maps(model_set: ModelSet, image: Image.Image, class_name: str | None) -> tuple[str, list[ClassMap]]:
    """Every method's explanation map (``mlc.explain.explanation_maps`` picks its kind) for one class."""
    model_set.require_models()
    with model_set.session():
        features = model_set.features(model_set.inputs(image))
        results = {n: explanation_maps(m.model, features=features[n]) for n, m in model_set.methods.items()}
    mean_scores = _score_table(model_set, {n: r[0] for n, r in results.items()}).mean(axis=1)
    chosen = resolve_class(model_set, class_name, mean_scores)
    maps = []
    for name, (logits, per_class, kind) in results.items():
        classes = model_set.methods[name].model.classes
        if chosen in classes:
            c = classes.index(chosen)
            maps.append(ClassMap(name, kind, per_class[0, c].numpy(), float(torch.sigmoid(logits[0, c]))))
    return chosen, maps


MAP_READING = (
    "How to read the maps: **CAM** (baseline, mlgcn, gcam) shows how much each place adds to the class "
    "score; these share one colour scale, from 0 to the largest value among them (the bar in each corner), "
    "and places that lower the score are not coloured. **Grad-CAM** (ggnn) weights the feature maps by "
    "the score's gradient; it is empty when no place raises the score. **Attention** (ssgrl) is where the "
    "class's semantic decoupling looks; it sums to 1 over the image. A dimmed map belongs to a method "
    "that does not predict the class (p below 0.5): it shows where that method looked, not evidence."
)
FLIP_READING = (
    "The map of the image and the map of its mirror image (mirrored back) share one colour scale; the "
    "third image is their difference (red: stronger in the image's own map, blue: stronger in the "
    "mirrored one, white: equal). **cosine** 1 = the map mirrors perfectly, 0 = unrelated; empty maps "
    "have none. **L_A** = mean squared difference of the two maps (G-CAM's training loss), in the map's "
    "own units: compare it between methods of the same map kind (CAMs are in logit units; attention sums "
    "to 1, so its L_A is tiny)."
)


def _colour_bar(canvas: np.ndarray, high: float, label: str) -> np.ndarray:
    """Draw the JET scale (0 .. high) with its end values in the lower right corner, in place."""
    import cv2

    h, w = canvas.shape[:2]
    bar_w, bar_h = min(120, w // 3), 8
    x0, y0 = w - bar_w - 6, h - bar_h - 18
    if x0 < 0 or y0 < 0:
        return canvas
    cv2.rectangle(canvas, (x0 - 4, y0 - 4), (w - 2, h - 2), (255, 255, 255), -1)
    ramp = cv2.applyColorMap(np.uint8(np.linspace(0, 255, bar_w))[None, :].repeat(bar_h, 0), cv2.COLORMAP_JET)
    canvas[y0:y0 + bar_h, x0:x0 + bar_w] = ramp[:, :, ::-1]
    text = dict(fontFace=cv2.FONT_HERSHEY_SIMPLEX, fontScale=0.35, color=(0, 0, 0), thickness=1, lineType=cv2.LINE_AA)
    cv2.putText(canvas, "0", (x0, h - 6), **text)
    end = f"{high:.3g} {label}"
    (tw, _), _ = cv2.getTextSize(end, text["fontFace"], text["fontScale"], 1)
    cv2.putText(canvas, end, (max(x0, w - 4 - tw), h - 6), **text)
    return canvas


def explanation_gallery(image: Image.Image, maps: list[ClassMap], threshold: float = 0.5) -> list[tuple[np.ndarray, str]]:
    """(overlay, caption) per method, the whole image (aspect kept). Maps of one kind share a scale
    from 0 to their largest value, so a weak map looks weak; a method that does not predict the
    class has its map dimmed and says so; an empty map says why."""
    canvas = display_array(image)
    top = {}
    for m in maps:
        top[m.kind] = max(top.get(m.kind, 0.0), float(np.max(m.map)))
    items = []
    for m in maps:
        high = top[m.kind]
        heat = np.clip(m.map / high, 0.0, 1.0) if high > 0 else np.zeros_like(m.map)
        predicted = m.probability >= threshold
        picture = overlay(canvas, heat, alpha=0.5 if predicted else 0.3, normalize=False)
        if not predicted:  # dimmed: towards white
            picture = np.uint8(0.45 * picture + 0.55 * 255)
        picture = _colour_bar(np.ascontiguousarray(picture), high, m.kind)
        caption = f"{m.method} - {m.kind} - p = {m.probability:.2f}"  # short: the gallery shows one line
        if not predicted:
            caption += " - not predicted"
        if float(np.max(m.map)) <= 0:
            caption += " - empty (nothing raises the score)"
        items.append((picture, caption))
    return items


@dataclass
class FlipResult:
    """Flip consistency of every method for one class, and the maps of the method on display."""

    class_name: str
    method: str
    kind: str
    original: np.ndarray  # (h, w) map of the image
    flipped_back: np.ndarray  # (h, w) map of the mirrored image, mirrored back
    scores: pd.DataFrame  # method, map, cosine, L_A


def flip_views(model_set: ModelSet, image: Image.Image, method: str, class_name: str | None) -> FlipResult:
    """CAM(I) against flip(CAM(flip(I))) for every method (``mlc.explain.flip_consistency``)."""
    model_set.require_models()
    shown = model_set.method(method).name
    with model_set.session():
        inputs = model_set.inputs(image)
        features, mirrored = model_set.features(inputs), model_set.features(inputs, flipped=True)
        with torch.no_grad():
            logits = {n: m.model.forward_head(features[n]).logits for n, m in model_set.methods.items()}
        chosen = resolve_class(model_set, class_name, _score_table(model_set, logits).mean(axis=1))
        consistency = {
            n: flip_consistency(m.model, features=features[n], flipped_features=mirrored[n])
            for n, m in model_set.methods.items() if chosen in m.model.classes
        }
    if shown not in consistency:
        raise RequestError(f"{shown} has no class {chosen!r}.")
    rows = []
    for name, fc in consistency.items():
        c = model_set.methods[name].model.classes.index(chosen)
        cosine, squared_error = float(fc.score[0, c]), float(fc.squared_error[0, c])
        empty = bool(fc.empty[0, c])
        rows.append({"method": name, "map": fc.kind, "cosine": None if empty else cosine, "L_A": squared_error,
                     "note": "empty map: no place raises this class's score, so no cosine" if empty else ""})
    c = model_set.methods[shown].model.classes.index(chosen)
    fc = consistency[shown]
    return FlipResult(chosen, shown, fc.kind, fc.maps[0, c].numpy(), fc.flipped_back[0, c].numpy(), pd.DataFrame(rows))


def difference_image(canvas: np.ndarray, difference: np.ndarray) -> np.ndarray:
    """The signed difference in a diverging colormap (white = 0, symmetric range) over the grey image."""
    limit = float(np.abs(difference).max()) or 1.0
    heat = map_to_image(difference / limit, canvas.shape[:2])
    colored = colormaps["RdBu_r"]((heat + 1.0) / 2.0)[..., :3] * 255.0
    grey = canvas.astype(np.float32).mean(axis=2, keepdims=True)
    return np.uint8(np.clip(0.35 * grey + 0.65 * colored, 0, 255))


def flip_gallery(image: Image.Image, result: FlipResult) -> list[tuple[np.ndarray, str]]:
    """Map, flipped-back map (scaled together so their strengths compare) and their difference."""
    canvas = display_array(image)
    both = normalize_map(np.stack([result.original, result.flipped_back]))
    limit = float(np.abs(result.original - result.flipped_back).max())
    label = f"{result.method} - {result.kind}"
    return [
        (overlay(canvas, both[0], normalize=False), f"{label}: map of the image"),
        (overlay(canvas, both[1], normalize=False), f"{label}: mirrored, flipped back"),
        (difference_image(canvas, result.original - result.flipped_back), f"difference (scale +-{limit:.2g})"),
    ]


# -- analysis -------------------------------------------------------------------------------------
def _read_report(root: Path) -> dict | None:
    """``report.json`` written by ``python -m train report`` beside the variant folders, if any."""
    path = Path(root) / "report.json"
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def seed_comparison(model_set: ModelSet) -> tuple[str, pd.DataFrame | None]:
    """Each variant's mAP over seeds and, for the graph variants, the paired bootstrap 95% interval
    of its difference from the baseline, from the shipped report.json (nothing recomputed)."""
    report = model_set.report or {}
    seeds, boot = report.get("seeds") or {}, report.get("bootstrap") or {}
    if not seeds:
        return "No report.json with seeds was shipped with these models, so differences have no error bars.", None
    comparisons = boot.get("comparisons") or {}
    finetune = report.get("finetune") or {}
    rows = []
    for variant, entry in seeds.items():
        m = entry.get("map") or {}
        spread = "" if m.get("std") is None else f" ± {100 * m['std']:.2f}"
        row = {"method": variant, "mAP (mean over seeds)": f"{100 * m['mean']:.2f}{spread}" if m.get("mean") is not None else "n/a",
               "seeds": m.get("n")}
        if variant in finetune:
            row["frozen backbone mAP"] = f"{100 * finetune[variant]['stage1_map']['mean']:.2f}"
        c = comparisons.get(variant)
        if c and not c.get("skipped"):
            row[f"vs {boot.get('reference')} (pp, {100 * c['confidence']:.0f}% CI)"] = (
                f"{100 * c['difference']:+.2f} [{100 * c['low']:+.2f}, {100 * c['high']:+.2f}]")
            row["verdict"] = {"better": "better (interval above 0)", "worse": "worse (interval below 0)"}.get(
                c["verdict"], "not distinguishable (interval holds 0)")
        rows.append(row)
    status = (f"Over {max((r['seeds'] or 0) for r in rows)} seeds; the interval resamples the "
              f"{report.get('num_images', '?')} evaluation images ({boot.get('num_samples', '?')} paired bootstrap "
              "resamples): a difference is real only when its interval excludes 0.")
    return status, pd.DataFrame(rows)


def per_class_ap(model_set: ModelSet) -> pd.DataFrame:
    """AP (%) per class (rows) and method (columns) from each eval.json, mAP as the last row."""
    columns = {}
    for name, m in model_set.methods.items():
        if m.evaluation is not None:
            metrics = m.evaluation["metrics"]
            classes = metrics.get("classes") or m.model.classes
            values = [*metrics["ap"], metrics.get("map")]
            columns[name] = pd.Series([np.nan if v is None else 100 * v for v in values], index=[*classes, "mAP"])
    if not columns:
        raise RequestError("No loaded model has an eval.json, so there is no per-class AP to show.")
    classes = list(dict.fromkeys(c for s in columns.values() for c in s.index if c != "mAP"))
    return pd.DataFrame(columns, index=[*classes, "mAP"]).round(1)


def ap_chart(table: pd.DataFrame) -> Figure:
    fig = Figure(figsize=(12, 4), layout="constrained")
    ax = fig.add_subplot()
    _grouped_bars(ax, table, METHOD_COLORS)
    ax.set_ylabel("AP (%)")
    ax.set_ylim(0, 100)
    ax.set_title("Per-class AP (last group: mAP)")
    fig.legend(fontsize=8, ncols=len(table.columns), loc="outside upper center")
    return fig


def label_statistics(model_set: ModelSet, method: str | None) -> tuple[str, LabelStatistics]:
    """Training-split label statistics saved with a model (the first that has them by default)."""
    names = [method] if method else model_set.names
    for name in names:
        stats = model_set.method(name).model.label_stats
        if stats:
            return name, LabelStatistics.from_dict(stats)
    raise RequestError(f"{method or 'No loaded model'} has no label statistics in its config.")


def cooccurrence_heatmap(stats: LabelStatistics) -> Figure:
    """P(j | i) = n_ij / n_i, row i conditioning on class i."""
    prob = label_graph.conditional_probability(stats.counts, stats.cooccurrence)
    fig = Figure(figsize=(6.4, 5.6), layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(prob, cmap="viridis", vmin=0, vmax=1)
    ticks = np.arange(len(stats.classes))
    ax.set_xticks(ticks, stats.classes, rotation=90, fontsize=7)
    ax.set_yticks(ticks, stats.classes, fontsize=7)
    ax.set_xlabel("j")
    ax.set_ylabel("i")
    ax.set_title(f"P(j | i) over {stats.num_images} training images")
    fig.colorbar(image, ax=ax, shrink=0.8)
    return fig


def class_group(name: str) -> str:
    return next((g for g, members in CLASS_GROUPS.items() if name in members), "other")


def reweighted_graph(stats: LabelStatistics, tau: float, p: float) -> tuple[np.ndarray, int]:
    """(A'' of ML-GCN / G-CAM for this tau and p, number of directed edges of the thresholded A')."""
    binary = label_graph.threshold_adjacency(label_graph.conditional_probability(stats.counts, stats.cooccurrence), tau)
    return label_graph.reweight_adjacency(binary, p), label_graph.count_edges(binary)


def graph_figure(stats: LabelStatistics, weights: np.ndarray, tau: float, p: float, edges: int) -> Figure:
    """Nodes on a circle, one curved arrow i -> j per edge, width by its weight A''_ij."""
    n = len(stats.classes)
    angle = 2 * np.pi * np.arange(n) / max(n, 1)
    xy = np.stack([np.cos(angle), np.sin(angle)], axis=1)
    fig = Figure(figsize=(6.4, 6.4), layout="constrained")
    ax = fig.add_subplot()
    off_diagonal = weights * (1 - np.eye(n))
    top = float(off_diagonal.max()) or 1.0
    for i, j in zip(*np.nonzero(off_diagonal)):
        ax.add_patch(FancyArrowPatch(
            xy[i], xy[j], arrowstyle="-|>", mutation_scale=9, connectionstyle="arc3,rad=0.12",
            linewidth=0.4 + 3.0 * off_diagonal[i, j] / top, color="tab:blue", alpha=0.55, shrinkA=7, shrinkB=7,
        ))
    colors = [GROUP_COLORS[class_group(c)] for c in stats.classes]
    ax.scatter(xy[:, 0], xy[:, 1], s=90, c=colors, zorder=3, edgecolors="black", linewidths=0.5)
    for (x, y), name in zip(xy, stats.classes):
        align = "left" if x > 0.3 else "right" if x < -0.3 else "center"
        ax.text(1.09 * x, 1.09 * y, name, ha=align, va="center", fontsize=8)
    ax.legend(handles=[Line2D([], [], marker="o", linestyle="", color=c, label=g) for g, c in GROUP_COLORS.items()
                       if g in {class_group(n) for n in stats.classes}], fontsize=7, loc="lower left")
    ax.set_xlim(-1.35, 1.35)
    ax.set_ylim(-1.35, 1.35)
    ax.set_aspect("equal")
    ax.axis("off")
    ax.set_title(f"A'' (tau={tau:.2f}, p={p:.2f}): {edges} directed edges\nwidth = weight; self-loops (1-p) not drawn",
                 fontsize=10)
    return fig


def classifier_embedding(model_set: ModelSet) -> pd.DataFrame:
    """t-SNE of the baseline's learned classifiers and the GCN-produced ones of ML-GCN and G-CAM.

    Rows are L2-normalised first: the methods' weights differ in scale, and only direction matters
    for which class a pooled feature scores highest.
    """
    from sklearn.manifold import TSNE

    rows, vectors = [], []
    for name in TSNE_METHODS:
        if name in model_set.methods:
            model = model_set.methods[name].model
            with torch.no_grad():
                weights = model.classifier()[0].float().numpy()
            vectors.append(weights / np.maximum(np.linalg.norm(weights, axis=1, keepdims=True), 1e-12))
            rows += [{"method": name, "label": c, "group": class_group(c)} for c in model.classes]
    if not vectors:
        raise RequestError(f"The t-SNE needs at least one of {', '.join(TSNE_METHODS)}; none is loaded.")
    data = np.concatenate(vectors)
    if len(data) < 3:
        raise RequestError("The t-SNE needs at least three classifiers.")
    points = TSNE(n_components=2, perplexity=min(5.0, len(data) - 1.0), init="pca", random_state=0).fit_transform(data)
    return pd.DataFrame(rows).assign(x=points[:, 0], y=points[:, 1])


def tsne_figure(embedding: pd.DataFrame) -> Figure:
    """Colour = class group, marker = method, every point labelled with its class."""
    markers = dict(zip(TSNE_METHODS, ("o", "s", "^")))
    fig = Figure(figsize=(8, 6), layout="constrained")
    ax = fig.add_subplot()
    for label, part in embedding.groupby("label", sort=False):  # one class's classifiers, joined
        if len(part) > 1:
            ax.plot(part.x, part.y, color="0.75", linewidth=0.6, zorder=1)
    for method, part in embedding.groupby("method", sort=False):
        ax.scatter(part.x, part.y, c=[GROUP_COLORS[g] for g in part.group], marker=markers[method],
                   s=60, edgecolors="black", linewidths=0.5, zorder=2)
    # each class named once, beside the centre of its points, on a white box so labels stay legible
    centres = embedding.groupby("label", sort=False)[["x", "y"]].mean()
    for label, row in centres.iterrows():
        ax.annotate(label, (row.x, row.y), fontsize=7, xytext=(4, 4), textcoords="offset points", zorder=3,
                    bbox=dict(boxstyle="round,pad=0.15", facecolor="white", edgecolor="none", alpha=0.8))
    handles = [Line2D([], [], marker=markers[m], linestyle="", color="black", label=m)
               for m in embedding.method.unique()]
    handles += [Line2D([], [], marker="o", linestyle="", color=c, label=g) for g, c in GROUP_COLORS.items()
                if g in set(embedding.group)]
    ax.legend(handles=handles, fontsize=8, loc="best")
    ax.set_title("t-SNE of the classifiers (baseline: learned; ML-GCN / G-CAM: produced by the GCN)")
    ax.set_xticks([])
    ax.set_yticks([])
    return fig
