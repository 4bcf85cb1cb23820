"""The interface shared by the five variants, and their one file format.

A saved model is a folder (or Hub repo) with ``config.json`` (model name, backbone, classes, label
statistics of the training split, label graph, label embeddings, hyper-parameters) and
``model.safetensors``. Everything inference needs is in those two files: no GloVe, no dataset.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from huggingface_hub import PyTorchModelHubMixin
from torch import nn

from mlc.models.backbones import create_backbone

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
FORMAT_VERSION = 1


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

    model_name: ClassVar[str] = ""
    has_cam: ClassVar[bool] = False  # logits linear in pooled features -> CAM exists
    defaults: ClassVar[dict[str, Any]] = {}

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
        # True while the backbone still equals its packaged/ImageNet weights (only heads trained):
        # such checkpoints leave the backbone out and rebuild it from those weights on load.
        self.backbone_is_pretrained = bool(pretrained)

    # -- what each variant provides -------------------------------------------------------
    def build_graph(self, label_stats: dict | None) -> dict | None:
        """Derive the variant's graph from training-split label statistics (None if it needs none)."""
        return None

    def forward_head(self, features: torch.Tensor, explain: bool = False) -> ModelOutput:
        raise NotImplementedError

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
            }
        )

    # -- file format (through huggingface_hub's mixin: local folder or Hub repo id) ----------
    def _save_pretrained(self, save_directory: Path) -> None:
        from safetensors.torch import save_file

        save_directory = Path(save_directory)
        config = self.get_config()
        dtype = getattr(self, "_save_dtype", None)
        state = {
            k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).contiguous()
            for k, v in self.state_dict().items()
            if config["backbone_in_checkpoint"] or not k.startswith("backbone.")
        }
        config["weights_dtype"] = str(dtype or torch.float32).replace("torch.", "")
        save_file(state, str(save_directory / WEIGHTS_NAME), metadata={"format": "pt"})
        (save_directory / CONFIG_NAME).write_text(json.dumps(config))

    def save(self, folder: str | Path, half: bool = False, **kwargs: Any) -> Path:
        """Save to a folder (``half`` stores floating weights as float16, loaded back as float32)."""
        self._save_dtype = torch.float16 if half else None
        try:
            self.save_pretrained(folder, **kwargs)
        finally:
            self._save_dtype = None
        return Path(folder)

    @classmethod
    def from_config(cls, config: dict[str, Any], pretrained_backbone: bool | None = None) -> "MultiLabelModel":
        from mlc.models.registry import get_model_class

        try:
            model_cls = get_model_class(config["model_name"])
            if pretrained_backbone is None:
                pretrained_backbone = not config.get("backbone_in_checkpoint", True)
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
        model.backbone_is_pretrained = not config.get("backbone_in_checkpoint", True)
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
        else:
            from huggingface_hub import hf_hub_download

            # "user/repo/variant" names a variant's subfolder of a multi-variant repo (train push)
            parts = model_id.strip("/").split("/")
            repo_id, subfolder = "/".join(parts[:2]), "/".join(parts[2:]) or None
            get = lambda name: hf_hub_download(  # noqa: E731
                repo_id=repo_id, filename=name, subfolder=subfolder, revision=revision, cache_dir=cache_dir,
                force_download=force_download, token=token, local_files_only=local_files_only,
            )
            config_path, weights_path = Path(get(CONFIG_NAME)), Path(get(WEIGHTS_NAME))
        try:
            config = json.loads(config_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise CheckpointError(f"{config_path} is not valid JSON: {err}") from None
        model = cls.from_config(config)
        try:
            state = load_file(str(weights_path))
        except Exception as err:
            raise CheckpointError(f"{weights_path} cannot be read as safetensors: {err}") from None
        own = model.state_dict()
        state = {k: v.to(own[k].dtype) if k in own else v for k, v in state.items()}
        missing, unexpected = model.load_state_dict(state, strict=False)
        if not config.get("backbone_in_checkpoint", True):
            missing = [k for k in missing if not k.startswith("backbone.")]
        if missing or unexpected:
            raise CheckpointError(
                f"{weights_path} does not match config {config['model_name']!r}: "
                f"missing {missing[:5]}, unexpected {unexpected[:5]}"
            )
        model.eval()
        return model


def load_model(path_or_repo_id: str | Path, **kwargs: Any) -> MultiLabelModel:
    """Load any of the five variants from a local folder or a Hugging Face Hub repo id."""
    import mlc.models  # noqa: F401  (registers the variants)

    return MultiLabelModel.from_pretrained(str(path_or_repo_id), **kwargs)
