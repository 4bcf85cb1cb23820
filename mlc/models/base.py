"""The interface shared by the five variants, and their one file format.

A saved model is a folder (or Hub repo) with ``config.json`` (model name, backbone, classes, label
statistics of the training split, label graph, label embeddings, hyper-parameters) and
``model.safetensors``. Everything inference needs is in those two files: no GloVe, no dataset.
"""
from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from huggingface_hub import PyTorchModelHubMixin
from torch import nn

from mlc.formats import CONFIG_FORMAT, FormatError, check_format
from mlc.calibration import Calibration, CalibrationError
from mlc.models.backbones import create_backbone

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
FORMAT_VERSION = CONFIG_FORMAT  # kept for readers of older code


class CheckpointError(ValueError):
    """A saved model that is missing, incomplete or inconsistent."""


@dataclass
class ModelOutput:
    """What a forward pass can return; maps are at feature-map resolution (stride 32)."""

    logits: torch.Tensor  # (B, C)
    features: torch.Tensor | None = None  # (B, N, h, w)
    cams: torch.Tensor | None = None  # (B, C, h, w) class activation maps (linear heads only)
    attention: torch.Tensor | None = None  # (B, C, h, w) SSGRL semantic-decoupling attention


def _as_array(x: Any) -> np.ndarray | None:
    return None if x is None else np.asarray(x, dtype=np.float32)


def _to_jsonable(x: Any) -> Any:
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, dict):
        return {k: _to_jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_to_jsonable(v) for v in x]
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    return x


class MultiLabelModel(nn.Module, PyTorchModelHubMixin, library_name="mlc", tags=["multi-label-image-classification"]):
    """Backbone -> variant head. Subclasses set ``defaults`` and implement ``forward_head``."""

    # What a variant declares about itself, read by training, the app, the card, the report and the
    # tests (the registry is the only list of variants; nothing outside a variant's file names it):
    model_name: ClassVar[str] = ""  # set by ``register_model``
    has_cam: ClassVar[bool] = False  # logits linear in pooled features: a CAM exists, and its classifiers can be plotted
    needs_embeddings: ClassVar[bool] = False  # built from label word embeddings (GloVe)
    uses_knowledge_graph: ClassVar[bool] = False  # takes an external knowledge graph (Visual Genome)
    defaults: ClassVar[dict[str, Any]] = {}  # hyper-parameters (``params``) and their defaults
    train_defaults: ClassVar[dict[str, Any]] = {}  # training config when a dataset has no <variant>.yaml
    no_graph_description: ClassVar[str] = ""  # what ``identity_graph`` puts in place of the label graph
    is_reference: ClassVar[bool] = False  # the plain model every graph variant is compared with
    trained_for_consistency: ClassVar[bool] = False  # its loss asks for consistent maps (the flip view's default)
    colour: ClassVar[str] = "tab:gray"  # the variant's colour in every plot
    summary: ClassVar[str] = ""  # a few words for the app's opening line

    def __init__(
        self,
        classes: list[str],
        backbone: str = "efficientnet_lite0",
        pretrained: bool = True,
        image_size: int = 224,
        pooling: str = "max",
        label_stats: dict | None = None,
        embeddings: Any = None,
        graph: dict | None = None,
        **params: Any,
    ):
        super().__init__()
        unknown = set(params) - set(self.defaults)
        if unknown:
            raise TypeError(f"{self.model_name}: unknown parameters {sorted(unknown)}; known: {sorted(self.defaults)}")
        if pooling not in ("max", "avg"):
            raise ValueError(f"pooling must be 'max' or 'avg', got {pooling!r}")
        self.classes = list(classes)
        self.backbone_name = backbone
        self.image_size = int(image_size)
        self.pooling = pooling
        self.params = {**self.defaults, **params}
        self.label_stats = label_stats.to_dict() if hasattr(label_stats, "to_dict") else label_stats
        self.embeddings = _as_array(embeddings)
        if graph is None:
            graph = self.build_graph(self.label_stats)
        self.graph = {
            k: np.asarray(v, dtype=np.float32) if k != "nodes" and isinstance(v, (list, np.ndarray)) else v
            for k, v in (graph or {}).items()
        }
        self.backbone = create_backbone(backbone, pretrained=pretrained)
        self.num_features = self.backbone.num_features
        # Which part of the backbone differs from its packaged/ImageNet weights: None (only heads
        # trained), "all", or "top:K" (blocks K.. fine-tuned). Checkpoints store only that part and
        # rebuild the rest from those weights on load.
        self.backbone_trained: str | None = None if pretrained else "all"
        # per-class thresholds and the out-of-distribution rule chosen on the selection split
        # (mlc.calibration); None for checkpoints saved before calibration existed
        self.calibration: Calibration | None = None

    @property
    def backbone_is_pretrained(self) -> bool:
        """True while the backbone still equals its packaged/ImageNet weights (only heads trained)."""
        return self.backbone_trained is None

    @backbone_is_pretrained.setter
    def backbone_is_pretrained(self, value: bool) -> None:
        self.backbone_trained = None if value else "all"

    # -- training: what the variant's loss needs (G-CAM overrides these) ---------------------
    def training_views(self) -> tuple[str, ...]:
        """Views of each training image whose feature maps the loss needs ("image" first)."""
        return ("image",)

    def view_images(self, images: torch.Tensor, view: str) -> torch.Tensor:
        """The image batch as seen by ``view`` (the views a subclass's ``training_views`` names)."""
        if view == "image":
            return images
        raise ValueError(f"{self.model_name} has no training view {view!r}")

    def training_loss(
        self, features: dict[str, torch.Tensor], targets: torch.Tensor, difficult_as_positive: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss, logits) of a batch from the feature maps of its ``training_views``; BCE by default."""
        from mlc.losses import multilabel_bce

        logits = self.forward_head(features["image"]).logits
        return multilabel_bce(logits.float(), targets, difficult_as_positive), logits

    # -- what each variant provides -------------------------------------------------------
    @classmethod
    def describe(cls, params: dict, pooling: str) -> str:
        """One paragraph for the model card: what this variant computes, with these hyper-parameters."""
        return f"**{cls.model_name}**: no description available for this variant."

    @classmethod
    def graph_card(cls, config: dict[str, Any]) -> list[str]:
        """The model card's "Label graph" lines for a saved ``config`` (its graph, params, classes)."""
        return ["None: this variant predicts every label independently."]

    @classmethod
    def external_data(cls, config: dict[str, Any], train_config: dict[str, Any] | None = None) -> list[str]:
        """What this saved model was built from beyond its backbone and training images, as keys of
        ``mlc.hub.EXTERNAL_DATA`` (for the card's provenance and terms): the label word vectors
        when the variant needs embeddings, the Visual Genome graph when it used one."""
        sources = []
        if cls.needs_embeddings:
            spec = str((train_config or {}).get("embeddings") or "")
            if spec == "glove50" or "glove.6b" in spec.lower():
                sources.append("glove6b")
            elif spec != "onehot":
                sources.append("word_vectors")
        if cls.uses_knowledge_graph and (config.get("graph") or {}).get("source") == "visual_genome":
            sources.append("visual_genome")
        return sources

    def build_graph(self, label_stats: dict | None) -> dict | None:
        """Derive the variant's graph from training-split label statistics (None if it needs none)."""
        return None

    def forward_head(self, features: torch.Tensor, explain: bool = False) -> ModelOutput:
        raise NotImplementedError

    def graph_edges(self) -> list[tuple[nn.Module, str, torch.Tensor]]:
        """(module, buffer name, replacement) for each adjacency the head's message passing reads,
        the replacement being the graph with no edges between labels; empty without a label graph."""
        return []

    @property
    def has_label_graph(self) -> bool:
        return bool(self.graph_edges())

    @contextmanager
    def identity_graph(self) -> Iterator["MultiLabelModel"]:
        """The same trained model with its label graph replaced by no graph (the identity for a
        GCN, no edges for a GGNN), without retraining: what the graph itself contributes.
        A variant without a label graph is left as it is."""
        swaps = self.graph_edges()
        saved = [(module, name, getattr(module, name)) for module, name, _ in swaps]
        try:
            for module, name, value in swaps:
                setattr(module, name, value.to(getattr(module, name)))
            yield self
        finally:
            for module, name, value in saved:
                setattr(module, name, value)

    def randomization_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """(name, parameter) of the part the model-parameter randomisation test re-initialises
        (Adebayo et al. 2018, ``mlc.sanity``): the head by default; a variant whose classifier is a
        distinct top part (ML-GCN's GCN output) names only that."""
        return [(n, p) for n, p in self.named_parameters() if not n.startswith("backbone.")]

    def classifier(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(W (C, N), b (C,)) of a head whose logits are linear in pooled features."""
        raise NotImplementedError(f"{self.model_name} has no linear classifier over pooled features")

    # -- shared ---------------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def pool(self, features: torch.Tensor) -> torch.Tensor:
        return features.amax(dim=(2, 3)) if self.pooling == "max" else features.mean(dim=(2, 3))

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        return self.backbone(images)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(images)).logits

    def explain(self, images: torch.Tensor) -> ModelOutput:
        """Logits plus feature maps, CAMs / attention maps, for the explanation views."""
        features = self.forward_features(images)
        out = self.forward_head(features, explain=True)
        out.features = features
        return out

    def head_parameters(self) -> list[nn.Parameter]:
        backbone = {id(p) for p in self.backbone.parameters()}
        return [p for p in self.parameters() if id(p) not in backbone]

    @property
    def normalization(self):
        return self.backbone.normalization

    def get_config(self) -> dict[str, Any]:
        return _to_jsonable(
            {
                "format_version": FORMAT_VERSION,
                "model_name": self.model_name,
                "classes": self.classes,
                "backbone": self.backbone_name,
                "image_size": self.image_size,
                "pooling": self.pooling,
                "normalization": {"mean": list(self.normalization.mean), "std": list(self.normalization.std)},
                "params": self.params,
                "label_stats": self.label_stats,
                "embeddings": self.embeddings,
                "graph": self.graph or None,
                "backbone_in_checkpoint": not self.backbone_is_pretrained,
                "backbone_trained": self.backbone_trained,
                "calibration": None if self.calibration is None else self.calibration.to_dict(),
            }
        )

    # -- file format (through huggingface_hub's mixin: local folder or Hub repo id) ----------
    def _save_pretrained(self, save_directory: Path) -> None:
        from safetensors.torch import save_file

        save_directory = Path(save_directory)
        config = self.get_config()
        dtype = getattr(self, "_save_dtype", None)
        keep_backbone = self._saved_backbone_names()
        state = {
            k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).contiguous()
            for k, v in self.state_dict().items()
            if not k.startswith("backbone.") or k[len("backbone."):] in keep_backbone
        }
        config["weights_dtype"] = str(dtype or torch.float32).replace("torch.", "")
        save_file(state, str(save_directory / WEIGHTS_NAME), metadata={"format": "pt"})
        (save_directory / CONFIG_NAME).write_text(json.dumps(config))

    def _saved_backbone_names(self) -> set[str]:
        """Backbone state names a checkpoint stores: none, all, or those of the fine-tuned top part."""
        if self.backbone_trained is None:
            return set()
        cut = top_cut(self.backbone_trained)
        if cut is None:
            return set(self.backbone.state_dict())
        return self.backbone.top_state_names(cut)

    def save(self, folder: str | Path, half: bool = False, **kwargs: Any) -> Path:
        """Save to a folder (``half`` stores floating weights as float16, loaded back as float32).

        Atomic: written to a sibling temporary folder, then swapped in, so a kill mid-save leaves
        the previous complete folder (or none), never a half-written one.
        """
        import shutil
        import tempfile

        folder = Path(folder)
        folder.parent.mkdir(parents=True, exist_ok=True)
        self._save_dtype = torch.float16 if half else None
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.partial-", dir=folder.parent))
        tmp.chmod(0o755)  # mkdtemp makes it private; a model folder is as readable as any other
        try:
            self.save_pretrained(tmp, **kwargs)
            old = folder.with_name(f".{folder.name}.old")
            if old.exists():
                shutil.rmtree(old)
            if folder.exists():
                folder.rename(old)
            tmp.rename(folder)
            shutil.rmtree(old, ignore_errors=True)
        finally:
            self._save_dtype = None
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        return folder

    @classmethod
    def from_config(cls, config: dict[str, Any], pretrained_backbone: bool | None = None) -> "MultiLabelModel":
        from mlc.models.registry import get_model_class

        try:
            model_cls = get_model_class(config["model_name"])
            classes = config["classes"]
            check_class_names(classes)
            if pretrained_backbone is None:  # rebuilt from packaged weights unless all of it is stored
                pretrained_backbone = (not config.get("backbone_in_checkpoint", True)
                                       or top_cut(config.get("backbone_trained")) is not None)
            model = model_cls(
                classes=config["classes"],
                backbone=config["backbone"],
                pretrained=pretrained_backbone,
                image_size=config.get("image_size", 224),
                pooling=config.get("pooling", "max"),
                label_stats=config.get("label_stats"),
                embeddings=config.get("embeddings"),
                graph=config.get("graph") or {},
                **config.get("params", {}),
            )
        except KeyError as err:
            raise CheckpointError(f"model config lacks the field {err}") from None
        except CheckpointError:
            raise
        except (TypeError, ValueError) as err:  # unknown hyper-parameters, inconsistent sizes
            raise CheckpointError(f"model config does not fit {config.get('model_name')!r}: {err}") from None
        if not config.get("backbone_in_checkpoint", True):
            model.backbone_trained = None
        else:
            model.backbone_trained = config.get("backbone_trained") or "all"
        model.calibration = read_calibration(config)
        return model

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | Path,
        *,
        revision: str | None = None,
        cache_dir: str | Path | None = None,
        force_download: bool = False,
        local_files_only: bool = False,
        token: str | bool | None = None,
    ) -> "MultiLabelModel":
        """Load from a local folder or a Hub repo id; the variant is read from config.json.

        Overrides the mixin's reader so a broken config gives a ``CheckpointError`` naming the file.
        """
        return cls._from_pretrained(
            model_id=str(pretrained_model_name_or_path), revision=revision, cache_dir=cache_dir,
            force_download=force_download, local_files_only=local_files_only, token=token,
        )

    @classmethod
    def _from_pretrained(cls, *, model_id: str, revision, cache_dir, force_download, local_files_only, token, **kwargs):
        from safetensors.torch import load_file

        folder = Path(model_id)
        if folder.is_dir():
            config_path, weights_path = folder / CONFIG_NAME, folder / WEIGHTS_NAME
            for path in (config_path, weights_path):
                if not path.is_file():
                    raise CheckpointError(f"{path} is missing: not a saved mlc model folder")
        elif not looks_like_repo_id(model_id):
            raise CheckpointError(f"{model_id}: no such model folder (and not a Hub repo id user/name)")
        else:
            config_path, weights_path = _hub_files(model_id, revision, cache_dir, force_download, token, local_files_only)
        try:
            config = json.loads(config_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise CheckpointError(f"{config_path} is not valid JSON: {err}") from None
        if not isinstance(config, dict):
            raise CheckpointError(f"{config_path} must hold a JSON object")
        try:
            check_format(config, "config.json", CONFIG_FORMAT)
            model = cls.from_config(config)
        except (CheckpointError, FormatError) as err:
            raise CheckpointError(f"{config_path}: {err}") from None
        try:
            state = load_file(str(weights_path))
        except Exception as err:
            raise CheckpointError(f"{weights_path} cannot be read as safetensors: {err}") from None
        own = model.state_dict()
        mismatched = [k for k, v in state.items() if k in own and tuple(v.shape) != tuple(own[k].shape)]
        if mismatched:
            k = mismatched[0]
            raise CheckpointError(
                f"{weights_path} does not match {config_path.name}: {k} has shape {tuple(state[k].shape)}, "
                f"the config ({len(model.classes)} classes) gives {tuple(own[k].shape)}"
            )
        state = {k: v.to(own[k].dtype) if k in own else v for k, v in state.items()}
        missing, unexpected = model.load_state_dict(state, strict=False)
        stored = {"backbone." + k for k in model._saved_backbone_names()}
        missing = [k for k in missing if not k.startswith("backbone.") or k in stored]
        if missing or unexpected:
            raise CheckpointError(
                f"{weights_path} does not match config {config['model_name']!r}: "
                f"missing {missing[:5]}, unexpected {unexpected[:5]}"
            )
        model.eval()
        return model


def read_calibration(config: dict[str, Any]) -> Calibration | None:
    """The config's ``calibration`` (None when absent: older checkpoints), checked against its classes."""
    data = config.get("calibration")
    if data is None:
        return None
    try:
        calibration = Calibration.from_dict(data)
    except CalibrationError as err:
        raise CheckpointError(f"model config's calibration is unusable: {err}") from None
    if calibration.classes != list(config.get("classes") or []):
        raise CheckpointError("model config's calibration was computed for other classes than the model's")
    return calibration


def write_calibration(folder: str | Path, calibration: Calibration | None) -> Path:
    """Set (or remove, with None) the calibration in a saved model's ``config.json``, atomically;
    the weights are not touched. Returns the config path."""
    path = Path(folder) / CONFIG_NAME
    if not path.is_file():
        raise CheckpointError(f"{path} is missing: not a saved mlc model folder")
    config = json.loads(path.read_text())
    if calibration is not None and calibration.classes != config.get("classes"):
        raise CheckpointError(f"the calibration's classes differ from those of {path}")
    config["calibration"] = None if calibration is None else calibration.to_dict()
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(config))
    tmp.replace(path)
    return path


def top_cut(part: str | None) -> int | None:
    """The block index of a "top:K" backbone part (None for "all" / None)."""
    if part is None or part == "all":
        return None
    kind, _, index = str(part).partition(":")
    if kind != "top" or not index.isdigit():
        raise ValueError(f"backbone part must be 'all' or 'top:K' (K a block index), got {part!r}")
    return int(index)


def looks_like_repo_id(text: str) -> bool:
    """"user/name" or "user/name/subfolder": what the Hub could serve (a local path never is)."""
    import re

    if text.startswith((".", "/", "~")) or "\\" in text:
        return False
    return re.fullmatch(r"[\w.-]+/[\w.-]+(/[\w.-]+)*", text) is not None


def _hub_files(model_id, revision, cache_dir, force_download, token, local_files_only) -> tuple[Path, Path]:
    """config.json and model.safetensors of a Hub repo (or a variant subfolder), or a CheckpointError."""
    from huggingface_hub import hf_hub_download

    # "user/repo/variant" names a variant's subfolder of a multi-variant repo (train push)
    parts = model_id.strip("/").split("/")
    repo_id, subfolder = "/".join(parts[:2]), "/".join(parts[2:]) or None
    try:
        return tuple(  # type: ignore[return-value]
            Path(hf_hub_download(
                repo_id=repo_id, filename=name, subfolder=subfolder, revision=revision, cache_dir=cache_dir,
                force_download=force_download, token=token, local_files_only=local_files_only,
            ))
            for name in (CONFIG_NAME, WEIGHTS_NAME)
        )
    except Exception as err:  # offline, unknown repo, missing file, HTTP errors
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(
            f"{model_id}: no such local model folder, and the Hub could not provide it ({type(err).__name__}: {reason[:200]})"
        ) from None


def check_class_names(classes: Any) -> None:
    """Class names as every consumer needs them: distinct, non-empty, printable text (predict tables
    are indexed by name; a control character would break a table or a log line)."""
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) and c.strip() for c in classes):
        raise CheckpointError("the model config's 'classes' must be a non-empty list of names")
    odd = [c for c in classes if not c.isprintable() or len(c) > 100]
    if odd:
        raise CheckpointError(f"class name {odd[0][:40]!r} has control characters or is over 100 characters")
    seen: set[str] = set()
    twice = [c for c in classes if c in seen or seen.add(c)]
    if twice:
        raise CheckpointError(f"the class name {twice[0]!r} appears more than once in 'classes'")


def load_model(path_or_repo_id: str | Path, **kwargs: Any) -> MultiLabelModel:
    """Load any of the five variants from a local folder or a Hugging Face Hub repo id."""
    import mlc.models  # noqa: F401  (registers the variants)

    return MultiLabelModel.from_pretrained(str(path_or_repo_id), **kwargs)
