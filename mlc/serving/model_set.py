"""The models the app serves: loading a source (folder or Hub repo; a visitor's held to limits),
sharing one frozen backbone (or its bottom) between them, and one request at a time on them."""
from __future__ import annotations

import copy
import json
import re
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import numpy as np
import torch
from PIL import Image
from torch import nn

from mlc.data.transforms import build_transforms
from mlc.formats import EVAL_FORMAT, FormatError, check_format
from mlc.models import MultiLabelModel, list_models, load_model
from mlc.models.backbones import PACKAGED_LITES
from mlc.serving.errors import RequestError


@lru_cache(maxsize=8)
def _eval_transform(
    size: int, mean: tuple[float, ...], std: tuple[float, ...]
) -> Callable[[Image.Image], torch.Tensor]:
    return build_transforms(size, train=False, mean=mean, std=std)


def model_input(image: Image.Image, model: MultiLabelModel) -> torch.Tensor:
    """(1, 3, S, S): the evaluation transform of training (square resize, the model's normalization)."""
    norm = model.normalization
    return _eval_transform(model.image_size, tuple(norm.mean), tuple(norm.std))(image).unsqueeze(0)


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
    if isinstance(evaluation, dict):
        try:
            check_format(evaluation, "eval.json", EVAL_FORMAT)
        except FormatError as err:
            return None, str(err)
    metrics = evaluation.get("metrics") if isinstance(evaluation, dict) else None
    if not isinstance(metrics, dict) or not isinstance(metrics.get("ap"), list):
        return None, "eval.json has no metrics.ap list"
    return evaluation, ""


def _read_report(root: Path) -> dict | None:
    """``report.json`` written by ``python -m train report`` beside the variant folders, if any."""
    path = Path(root) / "report.json"
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


OFFLINE_BACKBONES = (*PACKAGED_LITES, "tiny")  # what a visitor's source may use: nothing to download


MAX_VISITOR_REPO_BYTES = 200 * 2**20


HUB_PATTERNS = ["*config.json", "*eval.json", "*model.safetensors", "report.json"]


MAX_VISITOR_IMAGE_SIZE = 640  # 448 and the papers' 576 still load; 3000 px would cost gigabytes a request


MAX_VISITOR_CLASSES = 1000


MAX_VISITOR_EMBEDDING = 1024


MAX_VISITOR_GRAPH_NODES = 2000  # a knowledge graph may have more nodes than labels


def check_visitor_config(config: Any) -> None:
    """What a visitor's config.json may ask of the server: an offline backbone, bounded sizes, and
    a graph and embeddings that fit its classes. Checked before any tensor is built."""
    if not isinstance(config, dict):
        raise RequestError("not a saved mlc model (config.json is not an object)")
    backbone = config.get("backbone")
    if backbone not in OFFLINE_BACKBONES:  # a visitor's source must not make the server download weights
        raise RequestError(f"its backbone is not one of {', '.join(OFFLINE_BACKBONES)} (would need a download)")
    size = config.get("image_size", 224)
    if not isinstance(size, int) or isinstance(size, bool) or not 32 <= size <= MAX_VISITOR_IMAGE_SIZE:
        raise RequestError(f"image_size must be a whole number from 32 to {MAX_VISITOR_IMAGE_SIZE}, got {str(size)[:20]}")
    classes = config.get("classes")
    if not isinstance(classes, list) or not 1 <= len(classes) <= MAX_VISITOR_CLASSES:
        raise RequestError(f"classes must be a list of 1 to {MAX_VISITOR_CLASSES} names")
    n = len(classes)
    embeddings = config.get("embeddings")
    if embeddings is not None:
        shape = np.shape(np.asarray(embeddings, dtype=object))
        if len(shape) != 2 or shape[0] != n or not 1 <= shape[1] <= MAX_VISITOR_EMBEDDING:
            raise RequestError(f"embeddings must be {n} rows of at most {MAX_VISITOR_EMBEDDING} numbers (one per class)")
    graph = config.get("graph") or {}
    if not isinstance(graph, dict):
        raise RequestError("graph must be an object of matrices")
    nodes = graph.get("nodes")
    for key, value in graph.items():
        if key in ("nodes", "source") or value is None:
            continue
        shape = np.shape(np.asarray(value, dtype=object))
        size = len(nodes) if isinstance(nodes, list) else n  # a knowledge graph's first n nodes are the labels
        if len(shape) != 2 or shape[0] != shape[1] or shape[0] != size or not n <= size <= MAX_VISITOR_GRAPH_NODES:
            raise RequestError(f"graph {key!r} must be {size} x {size} (one row and column per "
                               f"{'node' if isinstance(nodes, list) else 'class'}; at least {n}, at most "
                               f"{MAX_VISITOR_GRAPH_NODES})")


def _load_method(name: str, folder: Path, trusted: bool = True) -> Method:
    if not folder.is_dir():
        raise RequestError(f"missing: no {name}/ folder")
    if not trusted:
        try:
            config = json.loads((folder / "config.json").read_text())
        except (OSError, ValueError):
            raise RequestError("not a saved mlc model (config.json missing or unreadable)") from None
        check_visitor_config(config)
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
    return {name: root / name for name in list_models()}


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
        self.memo: dict[str, Any] = {}  # what views derive from these fixed models, kept by the views (analysis)
        self.memo_lock = threading.Lock()

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
        if not methods and not trusted and all(p.startswith("missing:") for p in problems.values()):
            # a folder with nothing to load reads like a missing one
            problems = {"source": "not a model folder here, nor a Hub repo id (user/name[@revision])"}
        return cls(methods, problems, text, _read_report(root))

    def release(self) -> None:
        """Free the models (a visitor's set, when the session ends or is evicted): what remains is empty."""
        self.methods.clear()
        self.shared.clear()
        self.memo.clear()
        self.problems = {"source": "these models were unloaded to free memory; load them again"}

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
                by_key[key] = model_input(image, m.model).to(self.device)
            out[name] = by_key[key]
        return out

    @property
    def device(self) -> torch.device:
        """Where the models are (the CPU, or a GPU lent by ZeroGPU: ``runtime.use_gpu``)."""
        first = next(iter(self.methods.values()), None)
        return next(first.model.parameters()).device if first is not None else torch.device("cpu")

    def to(self, device: str | torch.device) -> "ModelSet":
        """Move every model (and the backbones they share) to ``device``."""
        for m in self.methods.values():
            m.model.to(device)
        for backbone in self.shared:
            backbone.to(device)
        return self


def looks_like_repo(text: str) -> bool:
    """A Hub repo id, optionally pinned (``user/name@revision``)."""
    from mlc.models.base import looks_like_repo_id

    return looks_like_repo_id(split_revision(text)[0])
